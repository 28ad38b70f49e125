//! TLS of the Flight port (`--tls-cert`, `--tls-key`, optional
//! `--tls-client-ca`), through tonic's rustls support.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::config::OpsConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    #[error("{flag} {path}: {source}")]
    Read {
        flag: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--tls-cert/--tls-key/--tls-client-ca: not a usable certificate and key: {detail}")]
    Invalid { detail: String },
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|source| TlsFileError::Read {
        flag,
        path: path.to_path_buf(),
        source,
    })
}

/// The server's TLS settings, or `None` when TLS is off; the files are read
/// and their PEM checked here.
pub fn server_config(ops: &OpsConfig) -> Result<Option<ServerTlsConfig>, TlsFileError> {
    let (Some(cert), Some(key)) = (&ops.tls_cert, &ops.tls_key) else {
        return Ok(None);
    };
    // Both ring and aws-lc-rs are linked (the AWS SDK brings the latter), so
    // rustls cannot pick a provider by itself; an already installed one stays.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let identity = Identity::from_pem(read("--tls-cert", cert)?, read("--tls-key", key)?);
    let mut config = ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &ops.tls_client_ca {
        config = config.client_ca_root(Certificate::from_pem(read("--tls-client-ca", ca)?));
    }
    // Parse the PEM now, so a bad file stops the start before the node
    // announces itself, with the flags named.
    tonic::transport::Server::builder()
        .tls_config(config.clone())
        .map_err(|error| TlsFileError::Invalid {
            detail: error_chain(&error),
        })?;
    Ok(Some(config))
}

/// An error and its sources, joined (tonic's own text is "transport error").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
