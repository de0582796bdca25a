//! mock-ens configuration: plain data loaded by figment (defaults < TOML file < `ENS_*`
//! environment) and validated once at start, with errors naming the key and its source.

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use seg_config::{check_http_url as check_url, describe, origin};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole configuration of a mock-ens process.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the registration API, the push callback and the gateway callback listen.
    pub listen: SocketAddr,
    /// The EWS URL of seg-proxy, e.g. `http://127.0.0.1:8080/EWS/Exchange.asmx`, or
    /// `https://…` (required by devices registered with a client certificate, which they
    /// present on the TLS connection).
    pub gateway_url: String,
    /// A PEM file of the CA certificates that sign an `https://` gateway's certificate; the
    /// system's roots when absent.
    #[serde(default)]
    pub gateway_trust_store: Option<PathBuf>,
    /// The base URL at which the gateway and Exchange reach this process (push callbacks are
    /// `{public_url}/push/{token}`); defaults to `http://{listen}`.
    #[serde(default)]
    pub public_url: Option<String>,
    /// The embedded store's file.
    pub store: PathBuf,
    /// The file holding the key that seals credentials at rest; created (mode 0600) when
    /// missing. Defaults to the store's path with `.key` appended.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The value every registration request must carry in its `ApiToken` header. Secret.
    pub api_token: String,
    /// The header carrying the EAS device id on every EWS request, as the gateway expects it.
    #[serde(default = "default_device_header")]
    pub device_id_header: String,
    /// Subscription timing.
    #[serde(default)]
    pub subscriptions: SubscriptionTiming,
}

/// `[subscriptions]`: the timing ENS2 uses, shortened in tests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubscriptionTiming {
    /// A push subscription's `StatusFrequency` in minutes (ENS2 uses 15); a subscription
    /// silent for twice this long is recreated.
    pub status_frequency_minutes: u32,
    /// The length of one EWS "minute": 60 s against a real Exchange; shorter against a test
    /// Exchange whose minute is shorter.
    #[serde(with = "humantime_serde")]
    pub minute: Duration,
    /// A streaming connection's `ConnectionTimeout` in minutes (1 to 30).
    pub streaming_connection_minutes: u32,
    /// A pull subscription's polling interval.
    #[serde(with = "humantime_serde")]
    pub pull_interval: Duration,
    /// The first wait before retrying after an error or probing a blocked device.
    #[serde(with = "humantime_serde")]
    pub first_backoff: Duration,
    /// The longest wait between retries or probes.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// How long one EWS request may wait for its response headers.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for SubscriptionTiming {
    fn default() -> Self {
        SubscriptionTiming {
            status_frequency_minutes: 15,
            minute: Duration::from_secs(60),
            streaming_connection_minutes: 30,
            pull_interval: Duration::from_secs(60),
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            request_timeout: Duration::from_secs(100),
        }
    }
}

fn default_device_header() -> String {
    "X-Device-Id".into()
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A source could not be read or a value has the wrong type.
    #[error("{}", describe(.0))]
    Load(#[from] Box<figment::Error>),
    /// A value has the right type but cannot work.
    #[error("{key} (from {origin}): {message}")]
    Invalid {
        /// The key, e.g. `gateway_url`.
        key: &'static str,
        /// Where the value came from: a file, the environment, or the defaults.
        origin: String,
        /// What is wrong.
        message: String,
    },
}

impl Config {
    /// Loads and validates from the TOML file and the `ENS_*` environment (`ENS_API_TOKEN`,
    /// `ENS_SUBSCRIPTIONS__MINUTE`…).
    pub fn load(toml: &Path) -> Result<Config, ConfigError> {
        Self::load_from(toml, Env::prefixed("ENS_").split("__"))
    }

    /// [`Config::load`] with the environment provider given, for tests and embedders.
    pub fn load_from(toml: &Path, env: Env) -> Result<Config, ConfigError> {
        if !toml.is_file() {
            return Err(ConfigError::Invalid {
                key: "--config",
                origin: "the command line".into(),
                message: format!("{} is not a readable file", toml.display()),
            });
        }
        let figment = Figment::from(Serialized::default(
            "subscriptions",
            SubscriptionTiming::default(),
        ))
        .merge(Toml::file_exact(toml))
        .merge(env);
        let config: Config = figment.extract().map_err(Box::new)?;
        config.validate_with(|key| origin(figment.find_metadata(key)))?;
        Ok(config)
    }

    /// Checks the values that have the right type but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_with(|_| "the configuration".into())
    }

    fn validate_with(&self, origin: impl Fn(&str) -> String) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, message: String| ConfigError::Invalid {
            key,
            origin: origin(key),
            message,
        };
        check_url(&self.gateway_url).map_err(|m| invalid("gateway_url", m))?;
        if let Some(path) = &self.gateway_trust_store {
            if !path.is_file() {
                return Err(invalid(
                    "gateway_trust_store",
                    format!("{} is not a readable file", path.display()),
                ));
            }
            if !self.gateway_url.starts_with("https://") {
                return Err(invalid(
                    "gateway_trust_store",
                    "is only used with an https:// gateway_url".into(),
                ));
            }
        }
        if let Some(url) = &self.public_url {
            check_url(url).map_err(|m| invalid("public_url", m))?;
        }
        if self.api_token.len() < 16 {
            return Err(invalid(
                "api_token",
                "must be at least 16 characters".into(),
            ));
        }
        if http::HeaderName::from_bytes(self.device_id_header.as_bytes()).is_err() {
            return Err(invalid(
                "device_id_header",
                format!("{:?} is not a header name", self.device_id_header),
            ));
        }
        let timing = &self.subscriptions;
        if !(1..=1440).contains(&timing.status_frequency_minutes) {
            return Err(invalid(
                "subscriptions.status_frequency_minutes",
                "must be 1 to 1440 (EWS StatusFrequency)".into(),
            ));
        }
        if !(1..=30).contains(&timing.streaming_connection_minutes) {
            return Err(invalid(
                "subscriptions.streaming_connection_minutes",
                "must be 1 to 30 (EWS ConnectionTimeout)".into(),
            ));
        }
        if timing.minute.is_zero() {
            return Err(invalid("subscriptions.minute", "must not be zero".into()));
        }
        if timing.first_backoff.is_zero() || timing.first_backoff > timing.max_backoff {
            return Err(invalid(
                "subscriptions.first_backoff",
                "must be above zero and at most subscriptions.max_backoff".into(),
            ));
        }
        Ok(())
    }

    /// The base URL for push callbacks.
    pub fn public_base(&self) -> String {
        match &self.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("http://{}", self.listen),
        }
    }

    /// The file holding the sealing key.
    pub fn key_path(&self) -> PathBuf {
        match &self.key_file {
            Some(path) => path.clone(),
            None => {
                let mut name = self.store.as_os_str().to_owned();
                name.push(".key");
                PathBuf::from(name)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let path = dir.path().join("ens.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn no_env() -> Env {
        Env::prefixed("MOCK_ENS_TEST_UNSET_")
    }

    const MINIMAL: &str = r#"
listen = "127.0.0.1:9000"
gateway_url = "http://127.0.0.1:8080/EWS/Exchange.asmx"
store = "/tmp/ens.redb"
api_token = "0123456789abcdef"
"#;

    #[test]
    fn minimal_file_loads_with_ens2_timing() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::load_from(&write(&dir, MINIMAL), no_env()).unwrap();
        assert_eq!(config.subscriptions.status_frequency_minutes, 15);
        assert_eq!(config.public_base(), "http://127.0.0.1:9000");
        assert_eq!(config.key_path(), PathBuf::from("/tmp/ens.redb.key"));
        assert_eq!(config.device_id_header, "X-Device-Id");
    }

    #[test]
    fn invalid_value_names_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!("{MINIMAL}\n[subscriptions]\nstatus_frequency_minutes = 0\n");
        let error = Config::load_from(&write(&dir, &text), no_env())
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("subscriptions.status_frequency_minutes (from TOML file"),
            "{error}"
        );
        assert!(error.contains("ens.toml"), "{error}");
    }

    #[test]
    fn missing_key_and_unknown_key_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let error = Config::load_from(&write(&dir, "listen = \"127.0.0.1:1\"\n"), no_env())
            .unwrap_err()
            .to_string();
        assert!(error.contains("gateway_url"), "{error}");
        let error = Config::load_from(&write(&dir, &format!("{MINIMAL}\ncolour = 1\n")), no_env())
            .unwrap_err()
            .to_string();
        assert!(error.contains("colour"), "{error}");
    }

    #[test]
    fn trust_store_must_exist_and_go_with_an_https_gateway() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!("{MINIMAL}gateway_trust_store = \"/nonexistent/ca.pem\"\n");
        let error = Config::load_from(&write(&dir, &text), no_env())
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("gateway_trust_store (from TOML file"),
            "{error}"
        );
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "pem").unwrap();
        let text = format!(
            "{MINIMAL}gateway_trust_store = {:?}\n",
            ca.display().to_string()
        );
        let error = Config::load_from(&write(&dir, &text), no_env())
            .unwrap_err()
            .to_string();
        assert!(error.contains("https:// gateway_url"), "{error}");
        let text = text.replace("http://127.0.0.1:8080", "https://localhost:8443");
        let config = Config::load_from(&write(&dir, &text), no_env()).unwrap();
        assert_eq!(config.gateway_trust_store, Some(ca));
    }

    #[test]
    fn short_api_token_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let text = MINIMAL.replace("0123456789abcdef", "short");
        let error = Config::load_from(&write(&dir, &text), no_env())
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("api_token (from TOML file"), "{error}");
    }
}
