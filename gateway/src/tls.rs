//! TLS on the listeners (`tls:` for the data plane, `admin.tls:` for the admin plane).
//!
//! Certificates and keys are PEM files read once at start; a missing, unreadable or
//! malformed file is a config error naming its field, so a bad deployment fails at start
//! (exit 64) instead of on the first handshake. rustls on ring, as the upstream client, with
//! ALPN `h2` and `http/1.1`: HTTP/2 clients negotiate it, the rest speak HTTP/1.1.
//! Reloading certificates needs a restart.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tokio_rustls::TlsAcceptor;

use crate::base::ConfigError;

/// `tls:` (and `admin.tls:`): serve HTTPS instead of plain HTTP on that listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first (relative paths: to the working directory).
    pub cert_file: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the leaf certificate.
    pub key_file: String,
}

impl TlsConfig {
    /// Reads the files and builds the acceptor; `at` is the section's path for errors.
    pub fn acceptor(&self, at: &str) -> Result<TlsAcceptor, ConfigError> {
        let cert_at = format!("{at}.cert_file");
        let key_at = format!("{at}.key_file");
        let cert_pem = read(&cert_at, &self.cert_file)?;
        let key_pem = read(&key_at, &self.key_file)?;
        let certs = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                ConfigError::new(&cert_at, format!("'{}': bad PEM: {e}", self.cert_file))
            })?;
        if certs.is_empty() {
            return Err(ConfigError::new(
                cert_at,
                format!("'{}' holds no PEM certificate", self.cert_file),
            ));
        }
        // Never echo the key file's content: only its name and what is wrong.
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            ConfigError::new(
                &key_at,
                format!("'{}' holds no usable PEM private key ({e})", self.key_file),
            )
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError::new(at, format!("TLS set-up: {e}")))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| {
                ConfigError::new(
                    key_at,
                    format!("does not fit the certificate in cert_file: {e}"),
                )
            })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

fn read(at: &str, file: &str) -> Result<Vec<u8>, ConfigError> {
    if file.trim().is_empty() {
        return Err(ConfigError::new(at, "must not be empty"));
    }
    std::fs::read(Path::new(file))
        .map_err(|e| ConfigError::new(at, format!("cannot read '{file}': {e}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> String {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    #[test]
    fn bad_files_name_their_field() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = write(dir.path(), "garbage.pem", "not a certificate\n");
        let missing = dir.path().join("missing.pem").display().to_string();
        let cases = [
            (
                missing.clone(),
                garbage.clone(),
                "tls.cert_file",
                "cannot read",
            ),
            (
                garbage.clone(),
                garbage.clone(),
                "tls.cert_file",
                "no PEM certificate",
            ),
        ];
        for (cert_file, key_file, path, message) in cases {
            let e = TlsConfig {
                cert_file,
                key_file,
            }
            .acceptor("tls")
            .err()
            .unwrap();
            assert_eq!(e.path, path);
            assert!(e.message.contains(message), "{e}");
        }
    }
}
