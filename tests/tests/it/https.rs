//! HTTPS without a proxy: `--tls-cert`/`--tls-key` serve the API over TLS with that certificate,
//! SIGHUP loads a new one, and a bad new file keeps the one in use.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trackmesh_tests::TestNode;

/// A self-signed certificate for `localhost`: (certificate DER, certificate PEM, key PEM).
fn self_signed() -> (CertificateDer<'static>, String, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
        .expect("a self-signed certificate");
    (
        ck.cert.der().clone(),
        ck.cert.pem(),
        ck.signing_key.serialize_pem(),
    )
}

/// Replaces `path`'s content at once (write aside, rename), as a certificate renewal tool does.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// `GET /healthz` over TLS trusting only `ca`: (status line, the certificate the node showed).
async fn healthz_over_tls(
    node: &TestNode,
    ca: &CertificateDer<'static>,
) -> anyhow::Result<(String, CertificateDer<'static>)> {
    get_over_tls(node, ca, "/healthz").await
}

/// A TLS connection to the node, trusting only `ca`.
async fn tls_connect(
    node: &TestNode,
    ca: &CertificateDer<'static>,
) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone())?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(node.http_addr()).await?;
    Ok(tokio::time::timeout(
        Duration::from_secs(10),
        connector.connect(ServerName::try_from("localhost")?, tcp),
    )
    .await??)
}

/// `GET path` over TLS trusting only `ca`: (status line, the certificate the node showed).
async fn get_over_tls(
    node: &TestNode,
    ca: &CertificateDer<'static>,
    path: &str,
) -> anyhow::Result<(String, CertificateDer<'static>)> {
    let mut tls = tls_connect(node, ca).await?;
    let shown = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no certificate shown"))?;
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut answer = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        (&mut tls).take(64 * 1024).read_to_end(&mut answer),
    )
    .await??;
    let text = String::from_utf8_lossy(&answer);
    Ok((text.lines().next().unwrap_or_default().to_string(), shown))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_certificate_reloaded_on_sighup() {
    let dir = std::env::temp_dir().join(format!("tm-https-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    let (first, first_pem, first_key) = self_signed();
    std::fs::write(&cert_path, &first_pem).expect("cert");
    std::fs::write(&key_path, &first_key).expect("key");
    let (cert_arg, key_arg) = (
        cert_path.to_str().expect("UTF-8 path"),
        key_path.to_str().expect("UTF-8 path"),
    );
    let node = TestNode::start_process(&["--tls-cert", cert_arg, "--tls-key", key_arg])
        .expect("a node serving HTTPS");

    assert_eq!(
        node.ready_field("scheme"),
        Some("https"),
        "the ready line says the HTTP address speaks HTTPS"
    );
    assert!(
        node.http_url().starts_with("https://"),
        "{}",
        node.http_url()
    );
    let (status, shown) = healthz_over_tls(&node, &first)
        .await
        .expect("HTTPS request");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(shown, first, "the node shows the configured certificate");
    // It reads its own gossiped https:// API address (it once refused it and left itself out of
    // its own view, with a warning about an unreadable value).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !node.log().contains("cannot read"),
        "no unreadable gossip value: {}",
        node.log()
    );
    // Plain HTTP on the same port gets no answer a client could take for one.
    let plain = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
        .get(format!("http://{}/healthz", node.http_addr()))
        .send()
        .await;
    assert!(
        plain
            .as_ref()
            .map(|r| r.status().as_u16() != 200)
            .unwrap_or(true),
        "plain HTTP is not served: {plain:?}"
    );

    // A renewed certificate, then SIGHUP: new connections get it.
    let (second, second_pem, second_key) = self_signed();
    replace(&key_path, &second_key);
    replace(&cert_path, &second_pem);
    node.signal("HUP").expect("SIGHUP");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match healthz_over_tls(&node, &second).await {
            Ok((status, shown)) if shown == second => {
                assert_eq!(status, "HTTP/1.1 200 OK");
                break;
            }
            other => assert!(
                Instant::now() < deadline,
                "the new certificate is not served after SIGHUP: {other:?}; log: {}",
                node.log()
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A broken file and SIGHUP: one log line, and the certificate in use stays.
    replace(&cert_path, "not a certificate");
    node.signal("HUP").expect("SIGHUP");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !node.log().contains("HTTPS certificate not reloaded") {
        assert!(Instant::now() < deadline, "no reload error: {}", node.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let errors = node
        .log()
        .lines()
        .filter(|l| l.contains("HTTPS certificate not reloaded"))
        .count();
    assert_eq!(errors, 1, "{}", node.log());
    let (status, shown) = healthz_over_tls(&node, &second)
        .await
        .expect("HTTPS still served");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(shown, second, "the last good certificate stays");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A key that does not match the certificate stops the node at start, naming both files.
#[test]
fn a_mismatched_key_is_a_clear_fatal_error() {
    let dir = std::env::temp_dir().join(format!("tm-https-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (_, cert_pem, _) = self_signed();
    let (_, _, other_key) = self_signed();
    std::fs::write(dir.join("cert.pem"), cert_pem).expect("cert");
    std::fs::write(dir.join("key.pem"), other_key).expect("key");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let err = match TestNode::start_process(&[
        "--tls-cert",
        cert.to_str().expect("UTF-8"),
        "--tls-key",
        key.to_str().expect("UTF-8"),
    ]) {
        Ok(_) => panic!("a node started with a key that does not match its certificate"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("does not match"), "{err}");
    assert!(err.contains("key.pem"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Over the connection cap, HTTPS keeps the probe reserve: a TLS probe is served, any other
/// request gets the JSON 503, both over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_cap_a_tls_probe_is_served_and_other_requests_get_503() {
    let dir = std::env::temp_dir().join(format!("tm-https-cap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (cert, cert_pem, key_pem) = self_signed();
    std::fs::write(dir.join("cert.pem"), cert_pem).expect("cert");
    std::fs::write(dir.join("key.pem"), key_pem).expect("key");
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    let node = TestNode::start(&[
        "--tls-cert",
        c.to_str().expect("UTF-8"),
        "--tls-key",
        k.to_str().expect("UTF-8"),
        "--http-max-connections",
        "1",
        "--http-probe-reserve",
        "2",
    ])
    .expect("a node serving HTTPS");
    // The one normal slot, held open (idle) by this connection.
    let held = tls_connect(&node, &cert)
        .await
        .expect("the first connection");
    let (status, _) = get_over_tls(&node, &cert, "/healthz")
        .await
        .expect("a probe over the cap");
    assert_eq!(
        status, "HTTP/1.1 200 OK",
        "the probe reserve serves TLS probes"
    );
    let (status, _) = get_over_tls(
        &node,
        &cert,
        &format!("/v1/apps/{}/sessions/new", node.app_id()),
    )
    .await
    .expect("a call over the cap");
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
    drop(held);
    let _ = std::fs::remove_dir_all(&dir);
}
