//! Start-up errors that name the file, line and field, and the text they point into.
//!
//! Every file percore reads at start-up (the config, the device list it points at,
//! the tuning file) reports a mistake as a [`ConfigError`]: `{file}:{line}: {field}:
//! {message}`, so an operator can jump straight to the offending value. A TOML file
//! is read through a `Source`, which parses it into serde structs and turns the
//! byte spans of their values into lines.
//!
//! Its own module, below [`crate::config`], [`crate::devices`] and [`crate::tuning`],
//! so each of them can raise these errors without importing the others.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::Spanned;

/// A start-up mistake in one of the configuration files.
///
/// Displays as `{file}:{line}: {field}: {message}`, leaving out the parts that are
/// `None`, so an operator can jump straight to the offending value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file that holds the mistake (the config, the device list or the tuning file).
    pub file: PathBuf,
    /// 1-based line of the offending value, when it is known.
    pub line: Option<usize>,
    /// Dotted path of the offending key, e.g. `classes[1].period_ms`, when it is known.
    pub field: Option<String>,
    /// What is wrong, and where useful what was expected.
    pub message: String,
}

impl ConfigError {
    /// An error about a whole file, without line or field.
    pub fn new(file: impl Into<PathBuf>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: file.into(),
            line: None,
            field: None,
            message: message.into(),
        }
    }

    /// The same error, pinned to a 1-based line.
    pub fn at_line(mut self, line: usize) -> ConfigError {
        self.line = Some(line);
        self
    }

    /// The same error, naming the offending key.
    pub fn in_field(mut self, field: impl Into<String>) -> ConfigError {
        self.field = Some(field.into());
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// A TOML file being loaded: names it in errors and turns byte spans into lines.
/// Shared by [`crate::config`] and [`crate::tuning`].
pub(crate) struct Source<'a> {
    /// The file, as the caller named it.
    pub(crate) file: &'a Path,
    /// Its whole text after any byte order mark, which every span points into.
    pub(crate) text: &'a str,
}

impl<'a> Source<'a> {
    /// A leading UTF-8 byte order mark is dropped: toml skips it too, but left in the
    /// text it would become part of the first line's key in [`Source::key_before`].
    pub(crate) fn new(file: &'a Path, text: &'a str) -> Source<'a> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        Source { file, text }
    }

    /// 1-based line holding byte `offset`.
    pub(crate) fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&byte| byte == b'\n')
            .count()
            + 1
    }

    /// An error about the value at `span` (from a [`Spanned`]).
    pub(crate) fn error(
        &self,
        span: Range<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::new(self.file, message)
            .at_line(self.line_of(span.start))
            .in_field(field)
    }

    /// Read a file this one points at (at `pointer`, the key `field`) with `read`,
    /// as text or as bytes; an error names the line that points.
    pub(crate) fn read_referenced<T>(
        &self,
        path: &Path,
        pointer: &Spanned<String>,
        field: &str,
        read: impl FnOnce(&Path) -> std::io::Result<T>,
    ) -> Result<T, ConfigError> {
        read(path).map_err(|error| {
            self.error(
                pointer.span(),
                field,
                format!("cannot read {}: {error}", path.display()),
            )
        })
    }

    /// Parse the text into a serde file struct, turning toml's error into ours.
    pub(crate) fn parse<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        toml::from_str(self.text).map_err(|error| self.toml_error(&error))
    }

    /// Keep toml's message (it already names unknown or missing keys), put it on
    /// one line, and add the line and, for a bad value, the key it was given to.
    fn toml_error(&self, error: &toml::de::Error) -> ConfigError {
        let message = error
            .message()
            .lines()
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        let mut config_error = ConfigError::new(self.file, message);
        // toml reports a missing top-level key at 0..0, which is no place in the file.
        if let Some(span) = error.span().filter(|span| *span != (0..0)) {
            config_error = config_error.at_line(self.line_of(span.start));
            if let Some(key) = self.key_before(span.start) {
                config_error = config_error.in_field(key);
            }
        }
        config_error
    }

    /// The key of a `key = value` pair whose value starts at `offset`, if that is
    /// what the text there looks like (also inside an inline table).
    fn key_before(&self, offset: usize) -> Option<String> {
        let before = self.text.get(..offset)?;
        let line = before.rsplit('\n').next()?;
        let pair = line.trim_end().strip_suffix('=')?;
        let key = pair.rsplit(['{', ',']).next()?.trim();
        let is_key = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '"'));
        is_key.then(|| key.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_display_leaves_out_missing_parts() {
        let full = ConfigError::new("fleet.toml", "must be greater than 0")
            .at_line(12)
            .in_field("classes[1].period_ms");
        assert_eq!(
            full.to_string(),
            "fleet.toml:12: classes[1].period_ms: must be greater than 0"
        );
        let bare = ConfigError::new("devices.csv", "the device list is empty");
        assert_eq!(bare.to_string(), "devices.csv: the device list is empty");
        let no_line = ConfigError::new("fleet.toml", "required").in_field("classes");
        assert_eq!(no_line.to_string(), "fleet.toml: classes: required");
    }
}
