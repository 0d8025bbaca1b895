//! `[classes.metadata]` and `token_env`: request headers sent with every call
//! of a class — credentials above all — kept out of every log, report and
//! error.
//!
//! ```toml
//! token_env = "PERCORE_TOKEN"          # authorization: Bearer <its value>
//! [classes.metadata]
//! x-percore-class = "camera"           # a plain value
//! x-api-key = { env = "CAMERA_KEY" }   # a value read from the environment at load
//! ```
//!
//! Values are [`Secret`]s: their `Debug` prints `<redacted>`, the run's
//! description names the headers but not their values, and errors name the
//! header and the variable, never what it holds. On the wire each value is
//! marked sensitive, so HPACK never puts it in its dynamic table.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use crate::diagnostic::{ConfigError, Source};

/// Header names percore sets itself, or that HTTP/2 and gRPC reserve.
const RESERVED: [&str; 6] = [
    "content-type",
    "te",
    "host",
    "connection",
    "user-agent",
    "grpc-timeout",
];

/// Whether a lowercase header name is one percore sets itself or gRPC and
/// HTTP/2 reserve (`grpc-*`, pseudo-headers): no config may set it.
pub(super) fn is_reserved(lowercase: &str) -> bool {
    RESERVED.contains(&lowercase) || lowercase.starts_with("grpc-") || lowercase.starts_with(':')
}

/// A header value that must not be shown: its `Debug` is `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The value itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The headers a class sends with every call, by lowercase name, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata(pub Vec<(String, Secret)>);

impl Metadata {
    /// The header names, for descriptions that must not show the values.
    pub fn names(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_str()).collect()
    }
}

/// One `[classes.metadata]` value as written.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum MetadataValueFile {
    /// `name = "value"`.
    Plain(String),
    /// `name = { env = "VAR" }`.
    Env { env: String },
}

/// Reads an environment variable through `lookup` (the process's, in a run).
pub(super) type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Validates `token_env` and `[classes.metadata]` of one class.
pub(super) fn validate(
    token_env: Option<&Spanned<String>>,
    metadata: &BTreeMap<String, Spanned<MetadataValueFile>>,
    prefix: &str,
    source: &Source,
    lookup: Lookup<'_>,
) -> Result<Metadata, ConfigError> {
    let mut headers = Vec::new();
    let read_env = |var: &str, span: std::ops::Range<usize>, field: String| {
        lookup(var).ok_or_else(|| {
            source.error(
                span,
                field,
                format!("environment variable {var:?} is not set (or not valid UTF-8)"),
            )
        })
    };
    if let Some(var) = token_env {
        let token = read_env(var.get_ref(), var.span(), format!("{prefix}.token_env"))?;
        headers.push((
            "authorization".to_string(),
            Secret(format!("Bearer {}", token.trim())),
        ));
    }
    for (name, value) in metadata {
        let field = format!("{prefix}.metadata.{name}");
        let lowercase = name.to_ascii_lowercase();
        if http::HeaderName::from_bytes(lowercase.as_bytes()).is_err() {
            return Err(source.error(value.span(), field, "is not a valid header name"));
        }
        if is_reserved(&lowercase) {
            return Err(source.error(
                value.span(),
                field,
                "is set by percore or reserved by gRPC; choose another header",
            ));
        }
        if headers.iter().any(|(known, _)| *known == lowercase) {
            return Err(source.error(
                value.span(),
                field,
                "is set twice (token_env sets authorization)",
            ));
        }
        let text = match value.get_ref() {
            MetadataValueFile::Plain(text) => text.clone(),
            MetadataValueFile::Env { env } => read_env(env, value.span(), field.clone())?,
        };
        if http::HeaderValue::from_str(&text).is_err() {
            // Never the value itself: it may be a credential.
            return Err(source.error(
                value.span(),
                field,
                "its value is not a valid header value (control characters or non-ASCII)",
            ));
        }
        headers.push((lowercase, Secret(text)));
    }
    Ok(Metadata(headers))
}
