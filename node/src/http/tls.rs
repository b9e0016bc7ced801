//! HTTPS without a proxy (`--tls-cert`, `--tls-key`): the certificate and key are read from PEM
//! files at start and again on [`TlsCerts::reload`] (SIGHUP). A reload that fails keeps the
//! certificate in use, so a bad file never takes the node off the air.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{Context, bail};
use rustls::crypto::aws_lc_rs::sign::any_supported_type;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// PEM files larger than this are refused (a chain of a few certificates is a few KiB).
const MAX_PEM_BYTES: u64 = 1 << 20;

/// The certificate the HTTPS listener presents, reloadable while it runs.
#[derive(Debug)]
pub struct TlsCerts {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl TlsCerts {
    /// Reads the certificate chain and key; errors name the file and what is wrong with it.
    pub fn load(cert_path: &Path, key_path: &Path) -> anyhow::Result<Arc<TlsCerts>> {
        let key = read_pair(cert_path, key_path)?;
        Ok(Arc::new(TlsCerts {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            current: RwLock::new(Arc::new(key)),
        }))
    }

    /// Reads the files again and serves the new certificate to new connections; on an error the
    /// one in use stays.
    pub fn reload(&self) -> anyhow::Result<()> {
        let key = read_pair(&self.cert_path, &self.key_path)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(key);
        Ok(())
    }

    /// The rustls configuration of the listener: HTTP/1.1 only (the server speaks no HTTP/2).
    pub fn server_config(self: &Arc<Self>) -> Arc<rustls::ServerConfig> {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map(|b| b.with_no_client_auth().with_cert_resolver(self.clone()))
        // The default provider supports the default versions; this cannot fail.
        .unwrap_or_else(|_| {
            rustls::ServerConfig::builder()
                .with_no_client_auth()
                .with_cert_resolver(self.clone())
        });
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

impl ResolvesServerCert for TlsCerts {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

fn read_pair(cert_path: &Path, key_path: &Path) -> anyhow::Result<CertifiedKey> {
    let cert_pem = read_bounded(cert_path)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            anyhow::anyhow!("{}: not a PEM certificate chain: {e}", cert_path.display())
        })?;
    if chain.is_empty() {
        bail!("{}: no certificate in it", cert_path.display());
    }
    let key_pem = read_bounded(key_path)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| anyhow::anyhow!("{}: not a PEM private key: {e}", key_path.display()))?;
    let signing = any_supported_type(&key)
        .map_err(|e| anyhow::anyhow!("{}: unsupported private key: {e}", key_path.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        anyhow::anyhow!(
            "{} does not match the certificate in {}: {e}",
            key_path.display(),
            cert_path.display()
        )
    })?;
    Ok(certified)
}

fn read_bounded(path: &Path) -> anyhow::Result<Vec<u8>> {
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        bail!("{}: over {MAX_PEM_BYTES} bytes", path.display());
    }
    Ok(bytes)
}
