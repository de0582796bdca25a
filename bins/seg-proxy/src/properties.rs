//! Import of an existing SEG V2 `application-override.properties`, so an administrator moving
//! from the existing gateway keeps the settings they know.
//!
//! | property | key here |
//! |---|---|
//! | `enable.boxer.ens.ews.proxy` | `ews.enable_proxy` |
//! | `remove.unsupported.auth.for.ews` | `ews.remove_unsupported_auth` |
//! | `ignoreSslErrorsWithExch` | `exchange.ignore_ssl_errors` |
//!
//! Unknown properties are reported as warnings (SEG's file holds many settings this gateway has
//! no use for), never as errors. A known property with a value that is not `true` or `false` is an
//! error naming the property and the file. The file is parsed with the `java-properties` crate:
//! the format has escapes, continuation lines and three separators, not worth writing again.

use figment::value::{Dict, Map, Value};
use figment::{Metadata, Profile, Provider, Source};
use std::path::{Path, PathBuf};

/// Known properties and the configuration keys they set (section, key).
const KNOWN: [(&str, &str, &str); 3] = [
    ("enable.boxer.ens.ews.proxy", "ews", "enable_proxy"),
    (
        "remove.unsupported.auth.for.ews",
        "ews",
        "remove_unsupported_auth",
    ),
    ("ignoreSslErrorsWithExch", "exchange", "ignore_ssl_errors"),
];

/// Why a properties file could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum PropertiesError {
    /// The file could not be read or is not a properties file.
    #[error("cannot read properties file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: java_properties::PropertiesError,
    },
    /// A known property has a value that is not a boolean.
    #[error("{property} in {path}: expected true or false, found {value:?}")]
    NotBoolean {
        /// The property.
        property: &'static str,
        /// The file.
        path: PathBuf,
        /// The value found.
        value: String,
    },
}

/// A parsed properties file, usable as a figment provider.
#[derive(Debug, Clone)]
pub struct PropertiesFile {
    path: PathBuf,
    values: Map<String, Dict>,
    warnings: Vec<String>,
}

impl PropertiesFile {
    /// Reads and maps `path`.
    pub fn read(path: &Path) -> Result<Self, PropertiesError> {
        let read_error = |source| PropertiesError::Read {
            path: path.into(),
            source,
        };
        let bytes = std::fs::read(path)
            .map_err(|e| read_error(java_properties::PropertiesError::from(e)))?;
        Self::parse(path, &bytes)
    }

    /// Maps the properties file `bytes`, read from `path` (which only names the file in errors
    /// and warnings); [`PropertiesFile::read`] without the file system, for fuzzing and tests.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self, PropertiesError> {
        // java-properties 2.0.0 panics ("Must not use a decoder that has finished") when its
        // streaming decoder still holds bytes at the end of the input: a file that is only the
        // start of a byte order mark (`\xff`, found by fuzzing), UTF-16 of odd length. So the
        // file is decoded here as it would (windows-1252 unless a byte order mark says
        // otherwise) and handed over as UTF-8 ending with a line break: nothing is pending.
        let (text, _, _) = encoding_rs::WINDOWS_1252.decode(bytes);
        let text = format!("{text}\n");
        let mut properties = std::collections::HashMap::new();
        java_properties::PropertiesIter::new_with_encoding(text.as_bytes(), encoding_rs::UTF_8)
            .read_into(|key, value| {
                properties.insert(key, value);
            })
            .map_err(|source| PropertiesError::Read {
                path: path.into(),
                source,
            })?;
        Self::from_map(path, properties)
    }

    fn from_map(
        path: &Path,
        properties: std::collections::HashMap<String, String>,
    ) -> Result<Self, PropertiesError> {
        let mut values: Map<String, Dict> = Map::new();
        let mut warnings = Vec::new();
        let mut names: Vec<&String> = properties.keys().collect();
        names.sort();
        for name in names {
            let raw = &properties[name];
            match KNOWN.iter().find(|(property, _, _)| property == name) {
                Some((property, section, key)) => {
                    let value = match raw.trim().to_ascii_lowercase().as_str() {
                        "true" => true,
                        "false" => false,
                        _ => {
                            return Err(PropertiesError::NotBoolean {
                                property,
                                path: path.into(),
                                value: raw.clone(),
                            });
                        }
                    };
                    values
                        .entry((*section).to_owned())
                        .or_default()
                        .insert((*key).to_owned(), Value::from(value));
                }
                None => warnings.push(format!(
                    "{}: property {name} is not used by this gateway; ignored",
                    path.display()
                )),
            }
        }
        Ok(PropertiesFile {
            path: path.into(),
            values,
            warnings,
        })
    }

    /// Properties that were ignored, one sentence each.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }
}

impl Provider for PropertiesFile {
    fn metadata(&self) -> Metadata {
        Metadata::from("SEG properties file", Source::File(self.path.clone()))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let dict: Dict = self
            .values
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.clone())))
            .collect();
        Ok(Profile::Default.collect(dict))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_properties_map_to_keys_and_unknown_ones_warn() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("application-override.properties");
        std::fs::write(
            &path,
            "# SEG V2\nenable.boxer.ens.ews.proxy=true\nremove.unsupported.auth.for.ews : TRUE\n\
             ignoreSslErrorsWithExch false\nsome.other.setting=1\n",
        )
        .unwrap();
        let file = PropertiesFile::read(&path).unwrap();
        assert_eq!(file.values["ews"]["enable_proxy"], Value::from(true));
        assert_eq!(
            file.values["ews"]["remove_unsupported_auth"],
            Value::from(true)
        );
        assert_eq!(
            file.values["exchange"]["ignore_ssl_errors"],
            Value::from(false)
        );
        assert_eq!(file.warnings().len(), 1);
        assert!(file.warnings()[0].contains("some.other.setting"));
    }

    /// Found by fuzzing (fuzz/regressions/seg_properties/): java-properties panicked on a file
    /// that is only the start of a byte order mark, or UTF-16 of odd length.
    #[test]
    fn byte_order_mark_fragments_are_read_without_panic() {
        let path = Path::new("seg.properties");
        for bytes in [&b"\xff"[..], b"\xfe", b"\xef", b"\xef\xbb", b"\xff\xfeA"] {
            assert!(PropertiesFile::parse(path, bytes).is_ok(), "{bytes:?}");
        }
        let utf8_bom =
            PropertiesFile::parse(path, b"\xef\xbb\xbfenable.boxer.ens.ews.proxy=true").unwrap();
        assert_eq!(utf8_bom.values["ews"]["enable_proxy"], Value::from(true));
    }

    #[test]
    fn non_boolean_value_names_property_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg.properties");
        std::fs::write(&path, "enable.boxer.ens.ews.proxy=yes please\n").unwrap();
        let error = PropertiesFile::read(&path).unwrap_err().to_string();
        assert!(error.contains("enable.boxer.ens.ews.proxy"), "{error}");
        assert!(error.contains("seg.properties"), "{error}");
    }
}
