//! Credentials at rest: sealed with AES-256-GCM under a key kept in its own file, never in the
//! store. ENS2 never keeps device credentials in the clear, and neither does its stand-in.
//!
//! Each sealed value is `nonce (12 bytes) || ciphertext+tag`, base64, with the device id as
//! associated data, so a credential copied onto another device's record fails to open.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore as _;
use std::io::Write as _;
use std::path::Path;

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;

/// Seals and opens credentials; see the [module docs](self).
#[derive(Clone)]
pub struct Sealer {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

/// The key file is unusable or a sealed value does not open.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The key file could not be read or created.
    #[error("key file {path}: {source}")]
    KeyFile {
        /// The key file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The key file does not hold a 32-byte key in hex.
    #[error("key file {0} does not hold a 256-bit key in hex")]
    BadKey(String),
    /// The value was not sealed with this key for this device, or was altered.
    #[error("sealed credential does not open: wrong key, wrong device, or altered")]
    DoesNotOpen,
}

impl Sealer {
    /// A sealer with a key given as bytes.
    pub fn new(key: &[u8; KEY_LEN]) -> Self {
        Sealer {
            cipher: Aes256Gcm::new(key.into()),
        }
    }

    /// Reads the key from `path`, creating the file (mode 0600) with a fresh random key when it
    /// does not exist.
    pub fn from_key_file(path: &Path) -> Result<Self, SealError> {
        let io = |source| SealError::KeyFile {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let bytes = decode_hex(text.trim())
                    .filter(|bytes| bytes.len() == KEY_LEN)
                    .ok_or_else(|| SealError::BadKey(path.display().to_string()))?;
                let mut key = [0; KEY_LEN];
                key.copy_from_slice(&bytes);
                Ok(Sealer::new(&key))
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0; KEY_LEN];
                rand::rng().fill_bytes(&mut key);
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt as _;
                    options.mode(0o600);
                }
                let mut file = options.open(path).map_err(io)?;
                let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
                file.write_all(hex.as_bytes()).map_err(io)?;
                file.sync_all().map_err(io)?;
                Ok(Sealer::new(&key))
            }
            Err(error) => Err(io(error)),
        }
    }

    /// Seals `plaintext` for `device_id`.
    pub fn seal(&self, device_id: &str, plaintext: &[u8]) -> String {
        let mut nonce = [0; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: device_id.as_bytes(),
                },
            )
            // AES-GCM fails only for plaintexts beyond 64 GiB; credentials are bytes.
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        STANDARD.encode(out)
    }

    /// Opens what [`Sealer::seal`] sealed for the same `device_id`.
    pub fn open(&self, device_id: &str, sealed: &str) -> Result<Vec<u8>, SealError> {
        let bytes = STANDARD
            .decode(sealed)
            .map_err(|_| SealError::DoesNotOpen)?;
        if bytes.len() < NONCE_LEN {
            return Err(SealError::DoesNotOpen);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| SealError::DoesNotOpen)?;
        self.cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: device_id.as_bytes(),
                },
            )
            .map_err(|_| SealError::DoesNotOpen)
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_value_opens_for_its_device_only() {
        let sealer = Sealer::new(&[7; 32]);
        let sealed = sealer.seal("EASDEV1", b"alicepw");
        assert!(!sealed.contains("alicepw"));
        assert_eq!(sealer.open("EASDEV1", &sealed).unwrap(), b"alicepw");
        assert!(matches!(
            sealer.open("EASDEV2", &sealed),
            Err(SealError::DoesNotOpen)
        ));
        assert!(matches!(
            Sealer::new(&[8; 32]).open("EASDEV1", &sealed),
            Err(SealError::DoesNotOpen)
        ));
        assert!(sealer.open("EASDEV1", "not base64!").is_err());
        assert!(sealer.open("EASDEV1", "AAAA").is_err());
    }

    #[test]
    fn key_file_is_created_once_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ens.key");
        let sealed = Sealer::from_key_file(&path).unwrap().seal("D", b"secret");
        let again = Sealer::from_key_file(&path).unwrap();
        assert_eq!(again.open("D", &sealed).unwrap(), b"secret");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "zz").unwrap();
        assert!(matches!(
            Sealer::from_key_file(&path),
            Err(SealError::BadKey(_))
        ));
    }
}
