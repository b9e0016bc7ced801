//! Mutual TLS for relay links, rooted in the cluster secret.
//!
//! Every node derives the same Ed25519 CA key from the cluster secret, so every node can issue
//! itself a certificate under that CA and check that its peer's certificate was issued under it.
//! Both sides present and verify certificates (client auth is required), so a node without the
//! secret can neither serve nor subscribe. The secret is the root of trust: use a long random one
//! (its strength bounds an offline guess from a captured certificate).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ED25519,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The name in every node certificate; peers are identified by the handshake, not the name.
pub const SERVER_NAME: &str = "relay.trackmesh.invalid";

/// How long a silent relay link lives: a killed peer is noticed within this time even before
/// gossip says so.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(3);
const KEEP_ALIVE: Duration = Duration::from_millis(500);

pub struct RelayTls {
    pub server: quinn::ServerConfig,
    pub client: quinn::ClientConfig,
}

/// PKCS#8 v1 wrapping of a raw Ed25519 seed (RFC 8410).
fn ed25519_pkcs8(seed: &[u8; 32]) -> Vec<u8> {
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(seed);
    der
}

fn ca_seed(secret: &str) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        format!("trackmesh relay CA v1\0{secret}").as_bytes(),
    );
    let mut seed = [0u8; 32];
    seed.copy_from_slice(digest.as_ref());
    seed
}

fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(KEEP_ALIVE));
    // The constant is far below quinn's limit of 2^62 ms, so the conversion cannot fail.
    if let Ok(idle) = IDLE_TIMEOUT.try_into() {
        t.max_idle_timeout(Some(idle));
    }
    t.datagram_receive_buffer_size(Some(4 << 20));
    t.datagram_send_buffer_size(4 << 20);
    Arc::new(t)
}

pub fn relay_tls(secret: &str, node_id: &str, alpn: &[u8]) -> anyhow::Result<RelayTls> {
    let ca_key = KeyPair::from_pkcs8_der_and_sign_algo(
        &PrivatePkcs8KeyDer::from(ed25519_pkcs8(&ca_seed(secret))),
        &PKCS_ED25519,
    )
    .context("deriving the cluster CA key")?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "trackmesh cluster CA");
    ca_params.distinguished_name = dn;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .context("cluster CA certificate")?;

    let leaf_key = KeyPair::generate_for(&PKCS_ED25519).context("node key")?;
    let mut leaf_params = CertificateParams::new(vec![SERVER_NAME.to_string()])?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, node_id);
    leaf_params.distinguished_name = dn;
    leaf_params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let leaf_cert = leaf_params
        .signed_by(&leaf_key, &issuer)
        .context("node certificate")?;

    let ca_der: CertificateDer<'static> = ca_cert.der().clone();
    let chain = vec![leaf_cert.der().clone(), ca_der.clone()];
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_der).context("trusting the cluster CA")?;
    let roots = Arc::new(roots);
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());

    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .context("client verifier")?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key_der.clone_key())
        .context("relay server TLS")?;
    server.alpn_protocols = vec![alpn.to_vec()];
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key_der)
        .context("relay client TLS")?;
    client.alpn_protocols = vec![alpn.to_vec()];

    let server_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(server)
        .context("relay server QUIC crypto")?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
    server.transport_config(transport());
    let client_crypto = quinn::crypto::rustls::QuicClientConfig::try_from(client)
        .context("relay client QUIC crypto")?;
    let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
    client.transport_config(transport());
    Ok(RelayTls { server, client })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALPN: &[u8] = b"test-relay";

    /// Dials a server holding `server_secret` with a client holding `client_secret`.
    async fn handshake(server_secret: &str, client_secret: &str) -> bool {
        let server = relay_tls(server_secret, "server", ALPN).expect("server tls");
        let client = relay_tls(client_secret, "client", ALPN).expect("client tls");
        let listen: std::net::SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let ep = quinn::Endpoint::server(server.server, listen).expect("server endpoint");
        let addr = ep.local_addr().expect("addr");
        // The server side must take part in the handshake (and check the client's certificate).
        let accept = tokio::spawn(async move {
            match ep.accept().await {
                Some(incoming) => incoming.await.is_ok(),
                None => false,
            }
        });
        let dialer = quinn::Endpoint::client(listen).expect("client endpoint");
        let dialed = match dialer.connect_with(client.client, addr, SERVER_NAME) {
            Ok(connecting) => tokio::time::timeout(Duration::from_secs(5), connecting)
                .await
                .is_ok_and(|r| r.is_ok()),
            Err(_) => false,
        };
        let accepted = tokio::time::timeout(Duration::from_secs(5), accept)
            .await
            .is_ok_and(|r| r.unwrap_or(false));
        dialed && accepted
    }

    #[tokio::test]
    async fn only_nodes_with_the_cluster_secret_connect() {
        assert!(
            handshake("s3cret", "s3cret").await,
            "same secret: mutual TLS succeeds"
        );
        assert!(
            !handshake("s3cret", "other").await,
            "a client without the secret is refused"
        );
        assert!(
            !handshake("other", "s3cret").await,
            "a server without the secret is not trusted"
        );
    }
}
