//! What the workspace's binaries (`seg-proxy`, `mock-ens`) share when they load their
//! configuration with figment: error messages of the form `key (from source): problem`, so an
//! operator reads which key of which file (or environment variable) is wrong, and the checks
//! every URL key needs.
//!
//! Each binary keeps its own configuration types and validation; only the wording of errors and
//! these checks are common, so the two read the same to the operator.
//!
//! ```
//! use figment::{Figment, providers::{Format, Toml}};
//!
//! #[derive(Debug, serde::Deserialize)]
//! struct Config { port: u16 }
//!
//! let figment = Figment::from(Toml::string("port = \"eighty\""));
//! let error = figment.extract::<Config>().unwrap_err();
//! let text = seg_config::describe(&error);
//! assert!(text.starts_with("port (from TOML source string"), "{text}");
//! assert!(seg_config::check_http_url("ftp://host").is_err());
//! ```

use figment::Metadata;

/// Every error figment collected, each as `key (from source): problem`, `; `-separated, without
/// figment's profile prefix (these configurations have no profiles).
pub fn describe(error: &figment::Error) -> String {
    error
        .clone()
        .into_iter()
        .map(|error| {
            let key = if error.path.is_empty() {
                "configuration".to_owned()
            } else {
                error.path.join(".")
            };
            format!(
                "{key} (from {}): {}",
                origin(error.metadata.as_ref()),
                error.kind
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Where a value came from: the provider's name and source (`TOML file /etc/seg.toml`,
/// `environment variable(s)`), or `defaults` when no provider set it.
pub fn origin(metadata: Option<&Metadata>) -> String {
    match metadata {
        Some(metadata) => match &metadata.source {
            Some(source) => format!("{} {source}", metadata.name),
            None => metadata.name.to_string(),
        },
        None => "defaults".into(),
    }
}

/// Checks that `url` is an `http://` or `https://` URL with a host; the error says why not.
pub fn check_http_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url} is not a URL: {e}"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("https" | "http"), Some(_)) => Ok(()),
        _ => Err(format!(
            "{url} must be an http:// or https:// URL with a host"
        )),
    }
}

/// An error and its causes, `: `-separated (`cannot read keytab: /etc/seg.keytab: No such
/// file`), for one-line messages to operators.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_need_an_http_scheme_and_a_host() {
        assert!(check_http_url("https://mail.corp.example").is_ok());
        assert!(check_http_url("http://127.0.0.1:8080/EWS/Exchange.asmx").is_ok());
        assert!(check_http_url("mail.corp.example").is_err());
        assert!(check_http_url("ftp://mail.corp.example").is_err());
        assert!(check_http_url("not a url").is_err());
    }

    #[test]
    fn values_without_a_provider_come_from_the_defaults() {
        assert_eq!(origin(None), "defaults");
    }

    #[test]
    fn error_chains_list_every_cause() {
        let io = std::io::Error::other("disk on fire");
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("cannot read keytab")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        assert_eq!(error_chain(&Outer(io)), "cannot read keytab: disk on fire");
    }
}
