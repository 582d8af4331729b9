//! HTTPS for the daemon's server (`[server] tls_cert_file`, `tls_key_file`):
//! the certificate chain and key read once at start, TLS 1.2 and 1.3 with
//! rustls's safe defaults.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// The acceptor for `cert` (a PEM chain, the server's certificate first)
/// and `key` (its PEM private key), with errors that name the file.
pub fn acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| {
            anyhow::anyhow!(
                "[server] tls_cert_file {}: {e}; it must hold the PEM certificate chain, the server's certificate first",
                cert.display()
            )
        })?;
    anyhow::ensure!(
        !chain.is_empty(),
        "[server] tls_cert_file {} holds no certificate (no BEGIN CERTIFICATE block)",
        cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        anyhow::anyhow!("[server] tls_key_file {}: {e}; it must hold the certificate's PEM private key", key.display())
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| anyhow::anyhow!("[server] tls_cert_file and tls_key_file do not make a certificate: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
