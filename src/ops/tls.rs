//! TLS of the Flight port (`--tls-cert`, `--tls-key`, optional
//! `--tls-client-ca`), through tonic's rustls support.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::config::OpsConfig;

#[derive(Debug, thiserror::Error)]
#[error("{flag} {path}: {source}")]
pub struct TlsFileError {
    flag: &'static str,
    path: PathBuf,
    source: std::io::Error,
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|source| TlsFileError {
        flag,
        path: path.to_path_buf(),
        source,
    })
}

/// The server's TLS settings, or `None` when TLS is off. The PEM contents
/// are checked by tonic when the server starts.
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
    Ok(Some(config))
}
