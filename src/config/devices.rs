//! `[devices]`: where the fleet comes from, a CSV device list or a generated
//! fleet. Checked here before anything is read; [`crate::devices::Fleet`] then
//! reads the list or generates the fleet.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::diagnostic::{ConfigError, Source};
use crate::record::ClassIndex;

// ---------------------------------------------------------------------------------
// As written.
// ---------------------------------------------------------------------------------

/// `[devices]`: exactly one of the two ways to get a fleet.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DevicesFile {
    /// A CSV device list, relative to the config file.
    csv: Option<Spanned<String>>,
    /// A synthetic fleet, for demos and benchmarks.
    generate: Option<Spanned<GenerateFile>>,
}

/// `[devices] generate = { count = …, mix = { class = weight, … } }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GenerateFile {
    /// How many devices.
    count: Spanned<usize>,
    /// Relative share of each class; a map keyed by class name.
    mix: Spanned<BTreeMap<Spanned<String>, Spanned<u32>>>,
}

// ---------------------------------------------------------------------------------
// Validation.
// ---------------------------------------------------------------------------------

/// Where the fleet will come from, once the cheap checks have passed.
pub(super) enum FleetSource {
    /// A device list already read from disk, as bytes so that text which is not
    /// UTF-8 is reported at its own line of the list.
    Csv { path: PathBuf, bytes: Vec<u8> },
    /// A synthetic fleet, weights by class index.
    Generate {
        count: usize,
        mix: Vec<(ClassIndex, u32)>,
    },
}

impl DevicesFile {
    pub(super) fn validate(
        &self,
        span: Range<usize>,
        class_names: &[&str],
        base: &Path,
        source: &Source,
    ) -> Result<FleetSource, ConfigError> {
        match (&self.csv, &self.generate) {
            (Some(csv), None) => {
                let path = base.join(csv.get_ref());
                let bytes = source
                    .read_referenced(&path, csv, "devices.csv", |path| std::fs::read(path))?;
                Ok(FleetSource::Csv { path, bytes })
            }
            (None, Some(generate)) => generate.get_ref().validate(class_names, source),
            _ => Err(source.error(span, "devices", "set exactly one of csv or generate")),
        }
    }
}

impl GenerateFile {
    fn validate(&self, class_names: &[&str], source: &Source) -> Result<FleetSource, ConfigError> {
        let count = *self.count.get_ref();
        if count == 0 {
            return Err(source.error(
                self.count.span(),
                "devices.generate.count",
                "must be greater than 0",
            ));
        }
        // A device is addressed by a DeviceIndex (u32).
        if count > u32::MAX as usize {
            return Err(source.error(
                self.count.span(),
                "devices.generate.count",
                format!("must be at most {}", u32::MAX),
            ));
        }
        if self.mix.get_ref().is_empty() {
            return Err(source.error(
                self.mix.span(),
                "devices.generate.mix",
                "must name at least one class",
            ));
        }
        let mut mix = Vec::with_capacity(self.mix.get_ref().len());
        for (name, weight) in self.mix.get_ref() {
            let field = format!("devices.generate.mix.{}", name.get_ref());
            let Some(class) = class_names.iter().position(|known| known == name.get_ref()) else {
                return Err(source.error(
                    name.span(),
                    field,
                    format!(
                        "unknown class {:?} (known classes: {})",
                        name.get_ref(),
                        class_names.join(", ")
                    ),
                ));
            };
            if *weight.get_ref() == 0 {
                return Err(source.error(weight.span(), field, "must be greater than 0"));
            }
            // `validate_classes` capped the class count to what a ClassIndex holds.
            let class = ClassIndex::try_from(class).map_err(|_| {
                source.error(name.span(), "devices.generate.mix", "too many classes")
            })?;
            mix.push((class, *weight.get_ref()));
        }
        // Class order, not name order, so the spread follows the config's class list.
        mix.sort_unstable_by_key(|&(class, _)| class);
        Ok(FleetSource::Generate { count, mix })
    }
}
