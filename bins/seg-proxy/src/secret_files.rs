//! Files holding secrets that other users of the host may read: the configuration file when it
//! holds a secret itself, the TLS listener's private key and the Kerberos keytab. The gateway
//! still starts (an operator may have reasons, a group the service shares with a backup agent),
//! but says so at start and in `check-config`, naming the key and the file, never the content.
//!
//! ```
//! let config = seg_proxy::config::Config::default();
//! // Nothing configured, nothing exposed.
//! assert!(seg_proxy::secret_files::exposed_secret_files(&config, None).is_empty());
//! ```

use crate::config::Config;
use std::path::{Path, PathBuf};

/// A file holding a secret whose mode lets its group or others read or write it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExposedFile {
    /// The configuration key naming the file (`tls.key`, `auth.kcd.keytab`), or `--config`
    /// for the configuration file itself.
    pub key: &'static str,
    /// The file.
    pub path: PathBuf,
    /// Its permission bits (`0o644`).
    pub mode: u32,
}

impl std::fmt::Display for ExposedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} = {} holds a secret and is open to others (mode {:o}); chmod 600 it",
            self.key,
            self.path.display(),
            self.mode
        )
    }
}

/// The keys of a configuration file whose values are secrets (`section.key`; `admin.operators`
/// holds tokens).
const SECRET_KEYS: [(&str, &str); 6] = [
    ("compliance", "uem_password"),
    ("compliance", "uem_tenant_code"),
    ("compliance", "webhook_secret"),
    ("admin", "token"),
    ("admin", "operators"),
    ("compliance", "redis_url"),
];

/// The secret files of `config` (read from `config_file`, when given) that their group or
/// others may access (`mode & 0o077 != 0`). A file that cannot be examined is left out: the
/// configuration's validation names it.
pub fn exposed_secret_files(config: &Config, config_file: Option<&Path>) -> Vec<ExposedFile> {
    let mut files: Vec<(&'static str, &Path)> = Vec::new();
    if let Some(path) = config_file.filter(|path| file_holds_secrets(path)) {
        files.push(("--config", path));
    }
    if let Some(tls) = &config.tls {
        files.push(("tls.key", &tls.key));
    }
    if let Some(kcd) = &config.auth.kcd {
        files.push(("auth.kcd.keytab", &kcd.keytab));
    }
    files
        .into_iter()
        .filter_map(|(key, path)| exposed(key, path))
        .collect()
}

/// `path` as an [`ExposedFile`] under `key` when its group or others may access it.
pub fn exposed(key: &'static str, path: &Path) -> Option<ExposedFile> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
    (mode & 0o077 != 0).then(|| ExposedFile {
        key,
        path: path.to_owned(),
        mode,
    })
}

/// Whether the TOML file at `path` sets one of [`SECRET_KEYS`] (a Redis URL only with a
/// password). Secrets that come from the environment do not make the file one.
fn file_holds_secrets(path: &Path) -> bool {
    let Some(table) = std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
    else {
        return false;
    };
    SECRET_KEYS.iter().any(
        |(section, key)| match table.get(*section).and_then(|s| s.get(*key)) {
            None => false,
            Some(toml::Value::String(url)) if *key == "redis_url" => redis_url_has_password(url),
            Some(_) => true,
        },
    )
}

/// Whether a Redis URL carries a password (`redis://[user]:password@host`).
fn redis_url_has_password(url: &str) -> bool {
    url.split_once("://")
        .and_then(|(_, rest)| rest.rsplit_once('@'))
        .is_some_and(|(user_info, _)| user_info.contains(':'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Kcd, TlsFiles};
    use std::os::unix::fs::PermissionsExt as _;

    fn file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn secret_files_open_to_others_are_named_by_key_and_private_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let toml = file(
            dir,
            "seg.toml",
            "[admin]\ntoken = \"a-token-of-sixteen-characters\"\n",
            0o644,
        );
        let key = file(dir, "gateway.key", "KEY", 0o640);
        let keytab = file(dir, "seg.keytab", "KEYTAB", 0o600);
        let mut config = Config {
            tls: Some(TlsFiles {
                cert: dir.join("gateway.pem"),
                key: key.clone(),
            }),
            ..Config::default()
        };
        config.auth.kcd = Some(Kcd::new(dir.join("krb5.conf"), &keytab, "HTTP/seg"));

        let exposed = exposed_secret_files(&config, Some(&toml));

        assert_eq!(
            exposed,
            vec![
                ExposedFile {
                    key: "--config",
                    path: toml.clone(),
                    mode: 0o644
                },
                ExposedFile {
                    key: "tls.key",
                    path: key.clone(),
                    mode: 0o640
                },
            ]
        );
        let message = exposed[1].to_string();
        assert!(message.starts_with("tls.key = "), "{message}");
        assert!(
            message.contains("gateway.key") && message.contains("640"),
            "{message}"
        );
        assert!(!message.contains("KEY\n"), "never the content: {message}");

        std::fs::set_permissions(&keytab, std::fs::Permissions::from_mode(0o604)).unwrap();
        std::fs::set_permissions(&toml, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).unwrap();
        let exposed = exposed_secret_files(&config, Some(&toml));
        assert_eq!(
            exposed.iter().map(|e| e.key).collect::<Vec<_>>(),
            ["auth.kcd.keytab"]
        );
    }

    #[test]
    fn a_configuration_file_without_secrets_may_be_read_by_others() {
        let dir = tempfile::tempdir().unwrap();
        let plain = file(
            dir.path(),
            "plain.toml",
            "[listen]\nhttp = \"127.0.0.1:8080\"\n\
             [compliance]\nredis_url = \"redis://10.0.0.5:6379/\"\n",
            0o644,
        );
        assert!(exposed_secret_files(&Config::default(), Some(&plain)).is_empty());
        for secret in [
            "[compliance]\nuem_password = \"p\"\n",
            "[compliance]\nwebhook_secret = \"w\"\n",
            "[compliance]\nredis_url = \"redis://seg:pw@10.0.0.5:6379/\"\n",
            "[[admin.operators]]\nname = \"carol\"\ntoken = \"t\"\n",
        ] {
            let toml = file(dir.path(), "secret.toml", secret, 0o604);
            assert_eq!(
                exposed_secret_files(&Config::default(), Some(&toml)).len(),
                1,
                "{secret}"
            );
        }
    }

    #[test]
    fn a_missing_file_is_left_to_validation() {
        assert_eq!(
            exposed("tls.key", Path::new("/nonexistent/gateway.key")),
            None
        );
    }
}
