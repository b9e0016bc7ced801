//! Mutual TLS for relay links, rooted in the cluster secret.
//!
//! Every node derives the same Ed25519 CA key from the cluster secret, so every node can issue
//! itself a certificate under that CA and check that its peer's certificate was issued under it.
//! Both sides present and verify certificates (client auth is required), so a node without the
//! secret can neither serve nor subscribe. The secret is the root of trust: use a long random one
//! (its strength bounds an offline guess from a captured certificate).
//!
//! Rotation: a node may hold two secrets (current and previous). It trusts both CAs and holds a
//! certificate under each. As a server it presents the one under the CA the dialer asks for in
//! its SNI (`k<CA id>.relay.trackmesh.invalid`), or the current one; as a client it presents the
//! one under a CA the server names in its certificate request. So a node with NEW+OLD links both
//! with nodes that hold only OLD and with nodes that hold only NEW.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ED25519,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

/// The name in every node certificate; peers are identified by the handshake, not the name.
pub const SERVER_NAME: &str = "relay.trackmesh.invalid";

/// How long a silent relay link lives: a killed peer is noticed within this time even before
/// gossip says so.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(3);
const KEEP_ALIVE: Duration = Duration::from_millis(500);

/// The QUIC TLS setup of a node's relay endpoint, from the cluster secrets.
pub struct RelayTls {
    /// Accepts links only from nodes with a certificate under a cluster CA.
    pub server: quinn::ServerConfig,
    /// Dials peers, presenting this node's certificate.
    pub client: quinn::ClientConfig,
    /// The SNI to dial with: it asks for a certificate under the current secret's CA.
    pub server_name: String,
    /// Each secret's CA common name, in the order of the secrets (for [`peer_secret`]).
    pub ca_names: Vec<String>,
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

/// Bidirectional streams a relay link may hold open: its control stream and
/// [`MAX_CHANNEL_STREAMS_PER_LINK`](super::channels::MAX_CHANNEL_STREAMS_PER_LINK) channels.
const MAX_LINK_STREAMS: u32 = super::channels::MAX_CHANNEL_STREAMS_PER_LINK as u32 + 1;

fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(KEEP_ALIVE));
    // The constant is far below quinn's limit of 2^62 ms, so the conversion cannot fail.
    if let Ok(idle) = IDLE_TIMEOUT.try_into() {
        t.max_idle_timeout(Some(idle));
    }
    // A link carries its control stream and one stream per relayed DataChannel; quinn's
    // default of 100 streams would make the 100th channel pulled from one node wait for
    // another to end, well before the cap the relay means to set.
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(MAX_LINK_STREAMS));
    t.datagram_receive_buffer_size(Some(4 << 20));
    t.datagram_send_buffer_size(4 << 20);
    // Media must not wait behind congestion. Under random loss Cubic (quinn's default) shrinks
    // its window and datagrams queue: at 30 % relay loss audio p99 rose to 44-148 ms. BBR does
    // not read random loss as congestion: p99 stayed at 1.5-1.9 ms (BENCHMARKS.md).
    t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()));
    Arc::new(t)
}

/// One cluster secret's CA, the node's certificate under it, and its identifying name.
struct Authority {
    /// The CA's common name: `trackmesh cluster CA <id>`, with an id from the CA's public key,
    /// so peers can tell the CAs of two secrets apart during a rotation.
    name: String,
    /// The SNI a dialer uses to ask for a certificate under this CA.
    server_name: String,
    ca: CertificateDer<'static>,
    certified: Arc<CertifiedKey>,
}

fn authority(
    secret: &str,
    node_id: &str,
    leaf_key: &KeyPair,
    provider: &rustls::crypto::CryptoProvider,
) -> anyhow::Result<Authority> {
    let ca_key = KeyPair::from_pkcs8_der_and_sign_algo(
        &PrivatePkcs8KeyDer::from(ed25519_pkcs8(&ca_seed(secret))),
        &PKCS_ED25519,
    )
    .context("deriving the cluster CA key")?;
    let id: String = ca_key.public_key_raw()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let name = format!("trackmesh cluster CA {id}");
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name.as_str());
    ca_params.distinguished_name = dn;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .context("cluster CA certificate")?;

    // Any name under SERVER_NAME: the dialer's SNI picks the CA (see `BySni`).
    let mut leaf_params =
        CertificateParams::new(vec![SERVER_NAME.to_string(), format!("*.{SERVER_NAME}")])?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, node_id);
    leaf_params.distinguished_name = dn;
    leaf_params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let leaf_cert = leaf_params
        .signed_by(leaf_key, &issuer)
        .context("node certificate")?;
    let ca: CertificateDer<'static> = ca_cert.der().clone();
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let signing = provider
        .key_provider
        .load_private_key(key_der)
        .context("loading the node key")?;
    let certified = Arc::new(CertifiedKey::new(
        vec![leaf_cert.der().clone(), ca.clone()],
        signing,
    ));
    Ok(Authority {
        server_name: format!("k{id}.{SERVER_NAME}"),
        name,
        ca,
        certified,
    })
}

/// Server side: the certificate under the CA the dialer named in its SNI, when this node holds
/// that secret, else the one under the current secret.
#[derive(Debug)]
struct BySni {
    /// (server name, certificate), current secret first.
    certs: Vec<(String, Arc<CertifiedKey>)>,
}

impl rustls::server::ResolvesServerCert for BySni {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name();
        self.certs
            .iter()
            .find(|(name, _)| Some(name.as_str()) == sni)
            .or(self.certs.first())
            .map(|(_, c)| c.clone())
    }
}

/// Client side: the certificate under a CA the server says it trusts (its certificate request
/// names its CAs), the current secret's when it trusts both or names none.
#[derive(Debug)]
struct ByHint {
    /// (CA common name, certificate), current secret first.
    certs: Vec<(String, Arc<CertifiedKey>)>,
}

impl rustls::client::ResolvesClientCert for ByHint {
    fn resolve(
        &self,
        hints: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.certs
            .iter()
            .find(|(name, _)| hints.iter().any(|h| contains(h, name.as_bytes())))
            .or(self.certs.first())
            .map(|(_, c)| c.clone())
    }

    fn has_certs(&self) -> bool {
        !self.certs.is_empty()
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Relay TLS for a node holding `secrets` (the current one first, then the previous one during a
/// rotation): it trusts peers under any of their CAs and presents a certificate each peer trusts.
pub fn relay_tls(secrets: &[&str], node_id: &str, alpn: &[u8]) -> anyhow::Result<RelayTls> {
    anyhow::ensure!(!secrets.is_empty(), "no cluster secret");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let leaf_key = KeyPair::generate_for(&PKCS_ED25519).context("node key")?;
    let authorities = secrets
        .iter()
        .map(|s| authority(s, node_id, &leaf_key, &provider))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut roots = rustls::RootCertStore::empty();
    for a in &authorities {
        roots.add(a.ca.clone()).context("trusting the cluster CA")?;
    }
    let roots = Arc::new(roots);

    // The verifier names every trusted CA in its certificate request (rustls's default), which is
    // what lets a dialing peer pick its certificate (`ByHint`).
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .context("client verifier")?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(BySni {
            certs: authorities
                .iter()
                .map(|a| (a.server_name.clone(), a.certified.clone()))
                .collect(),
        }));
    server.alpn_protocols = vec![alpn.to_vec()];
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(ByHint {
            certs: authorities
                .iter()
                .map(|a| (a.name.clone(), a.certified.clone()))
                .collect(),
        }));
    client.alpn_protocols = vec![alpn.to_vec()];

    let server_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(server)
        .context("relay server QUIC crypto")?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
    server.transport_config(transport());
    let client_crypto = quinn::crypto::rustls::QuicClientConfig::try_from(client)
        .context("relay client QUIC crypto")?;
    let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
    client.transport_config(transport());
    Ok(RelayTls {
        server,
        client,
        server_name: authorities[0].server_name.clone(),
        ca_names: authorities.into_iter().map(|a| a.name).collect(),
    })
}

/// Which of this node's secrets (index into the `secrets` given to [`relay_tls`]) issued the
/// certificate a peer presented on `conn`: that peer holds that secret, so it is the one whose
/// cluster identity to show it. None when it cannot be told (then use the current one).
pub fn peer_secret(ca_names: &[String], conn: &quinn::Connection) -> Option<usize> {
    let chain = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    let leaf = chain.first()?;
    ca_names
        .iter()
        .position(|n| contains(leaf.as_ref(), n.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALPN: &[u8] = b"test-relay";

    /// Dials a server holding `server_secret` with a client holding `client_secret`.
    async fn handshake(server_secret: &str, client_secret: &str) -> bool {
        handshake_rotating(&[server_secret], &[client_secret])
            .await
            .is_some()
    }

    /// Dials a server holding `server` secrets with a client holding `client` secrets; on
    /// success, which of the client's secrets the server's certificate was issued under.
    async fn handshake_rotating(server: &[&str], client: &[&str]) -> Option<Option<usize>> {
        let server = relay_tls(server, "server", ALPN).expect("server tls");
        let client = relay_tls(client, "client", ALPN).expect("client tls");
        let listen: std::net::SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let ep = quinn::Endpoint::server(server.server, listen).expect("server endpoint");
        let addr = ep.local_addr().expect("addr");
        // The server side must take part in the handshake (and check the client's certificate).
        let accept = tokio::spawn(async move {
            match ep.accept().await {
                Some(incoming) => incoming.await.map(|_| ()).map_err(|e| e.to_string()),
                None => Err("endpoint closed".to_string()),
            }
        });
        let dialer = quinn::Endpoint::client(listen).expect("client endpoint");
        let dialed = match dialer.connect_with(client.client, addr, &client.server_name) {
            Ok(connecting) => {
                match tokio::time::timeout(Duration::from_secs(5), connecting).await {
                    Ok(Ok(conn)) => Some(peer_secret(&client.ca_names, &conn)),
                    _ => None,
                }
            }
            Err(_) => None,
        };
        let accepted = matches!(
            tokio::time::timeout(Duration::from_secs(5), accept).await,
            Ok(Ok(Ok(())))
        );
        dialed.filter(|_| accepted)
    }

    #[tokio::test]
    async fn rotation_never_splits_a_one_node_at_a_time_roll() {
        let (old, new) = ("old-secret", "new-secret");
        let both: &[&str] = &[new, old];
        // Step 1: nodes with NEW+OLD next to nodes with only OLD, both directions.
        assert_eq!(handshake_rotating(&[old], both).await, Some(Some(1)));
        assert_eq!(handshake_rotating(both, &[old]).await, Some(Some(0)));
        assert_eq!(handshake_rotating(both, both).await, Some(Some(0)));
        // Step 2: nodes with only NEW next to nodes with NEW+OLD.
        assert_eq!(handshake_rotating(&[new], both).await, Some(Some(0)));
        assert_eq!(handshake_rotating(both, &[new]).await, Some(Some(0)));
        // Nodes that never shared a secret do not link.
        assert_eq!(handshake_rotating(&[new], &[old]).await, None);
        assert_eq!(handshake_rotating(&[old], &[new]).await, None);
        assert_eq!(handshake_rotating(both, &["other"]).await, None);
    }

    /// A link's streams (its control stream and one per relayed DataChannel) are all open at
    /// once: quinn's default of 100 would hold the 100th channel pulled from one node.
    #[tokio::test]
    async fn a_link_holds_far_more_than_a_hundred_streams_at_once() {
        let server = relay_tls(&["s"], "server", ALPN).expect("server tls");
        let client = relay_tls(&["s"], "client", ALPN).expect("client tls");
        let listen: std::net::SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let ep = quinn::Endpoint::server(server.server, listen).expect("server endpoint");
        let addr = ep.local_addr().expect("addr");
        const STREAMS: usize = 300;
        let accept = tokio::spawn(async move {
            let conn = ep.accept().await.expect("incoming").await.expect("conn");
            let mut held = Vec::new();
            while held.len() < STREAMS {
                let Ok((send, mut recv)) = conn.accept_bi().await else {
                    break;
                };
                let mut b = [0u8; 1];
                if recv.read_exact(&mut b).await.is_err() {
                    break;
                }
                held.push((send, recv));
            }
            (held.len(), conn)
        });
        let dialer = quinn::Endpoint::client(listen).expect("client endpoint");
        let conn = dialer
            .connect_with(client.client, addr, &client.server_name)
            .expect("connect")
            .await
            .expect("conn");
        let mut open = Vec::new();
        for _ in 0..STREAMS {
            let opened = tokio::time::timeout(Duration::from_secs(10), conn.open_bi()).await;
            let Ok(Ok((mut send, recv))) = opened else {
                break;
            };
            send.write_all(b"x").await.expect("write");
            open.push((send, recv));
        }
        assert_eq!(
            open.len(),
            STREAMS,
            "every stream opened while all stay open"
        );
        let (accepted, _conn) = tokio::time::timeout(Duration::from_secs(10), accept)
            .await
            .expect("accepted in time")
            .expect("task");
        assert_eq!(accepted, STREAMS);
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
