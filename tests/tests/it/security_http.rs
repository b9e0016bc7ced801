//! The HTTP server cannot be starved (issue 9, item 3): idle and slowloris connections are closed
//! or refused while `/healthz` keeps answering, the connection caps refuse with a JSON 503 long
//! before the node runs out of file descriptors, and every error the HTTP layer makes itself has
//! a JSON body.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use trackmesh_tests::TestNode;
use trackmesh_tests::node::random_hex32;

/// Bound on any one wait for the node to answer or close.
const WAIT: Duration = Duration::from_secs(30);
/// Most bytes read from one answer.
const MAX_ANSWER: u64 = 256 * 1024;

fn start_node(args: &[&str]) -> TestNode {
    TestNode::start(args).expect("starting the trackmesh node")
}

#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
    json: Value,
}

fn parse_answer(bytes: &[u8]) -> Option<Answer> {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some(Answer {
        status,
        head: head.to_string(),
        body: body.to_string(),
        json: serde_json::from_str(body).unwrap_or(Value::Null),
    })
}

/// Reads until the node closes (every answer here ends the connection), bounded in size and time.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let read = async {
        let mut limited = stream.take(MAX_ANSWER);
        // A reset after the answer is fine: what arrived before it is kept.
        let _ = limited.read_to_end(&mut out).await;
    };
    let _ = tokio::time::timeout(WAIT, read).await;
    out
}

/// Reads one answer with a `content-length` body, leaving the connection open.
async fn read_one_answer(stream: &mut TcpStream) -> Answer {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        while bytes.len() < MAX_ANSWER as usize {
            if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if bytes.len() >= end + 4 + len {
                    return;
                }
            }
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(WAIT, read).await;
    parse_answer(&bytes)
        .unwrap_or_else(|| panic!("no answer: {:?}", String::from_utf8_lossy(&bytes)))
}

/// Sends `request` on a new connection, as curl would, and returns the answer.
async fn exchange(addr: SocketAddr, request: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("send request");
    let bytes = read_to_close(&mut stream).await;
    parse_answer(&bytes).unwrap_or_else(|| {
        panic!(
            "no HTTP answer to {:?}: got {:?}",
            String::from_utf8_lossy(&request[..request.len().min(80)]),
            String::from_utf8_lossy(&bytes)
        )
    })
}

async fn get(addr: SocketAddr, path: &str) -> Answer {
    exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
}

/// A POST to the app's `path` announcing 1000 bytes of body and sending only `start`: the
/// node's answer once the body deadline passed.
async fn stalled_body(node: &TestNode, path: &str, content_type: &str, start: &str) -> Answer {
    let mut stream = TcpStream::connect(node.http_addr()).await.expect("connect");
    stream
        .write_all(
            format!(
                "POST /v1/apps/{}/{path} HTTP/1.1\r\nHost: node\r\nAuthorization: Bearer {}\r\n\
                 Content-Type: {content_type}\r\nContent-Length: 1000\r\n\r\n{start}",
                node.app_id(),
                node.app_secret()
            )
            .as_bytes(),
        )
        .await
        .expect("send partial body");
    parse_answer(&read_to_close(&mut stream).await).expect("answer to a stalled body")
}

/// A POST to the app's `path` whose chunked body has a chunk-size line that is not hex.
async fn broken_chunked_body(node: &TestNode, path: &str, content_type: &str) -> Answer {
    exchange(
        node.http_addr(),
        format!(
            "POST /v1/apps/{}/{path} HTTP/1.1\r\nHost: node\r\nAuthorization: Bearer {}\r\n\
             Content-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n\
             4\r\n{{\"a\"\r\nzz\r\n",
            node.app_id(),
            node.app_secret()
        )
        .as_bytes(),
    )
    .await
}

#[track_caller]
fn assert_problem_answer(a: &Answer, status: u16) {
    assert_eq!(a.status, status, "status; answer: {a:?}");
    assert_eq!(
        a.json.get("status").and_then(Value::as_u64),
        Some(u64::from(status)),
        "{a:?}"
    );
    assert!(a.json.get("detail").is_some_and(Value::is_string), "{a:?}");
    assert!(
        a.head
            .to_ascii_lowercase()
            .contains("content-type: application/problem+json"),
        "{a:?}"
    );
}

#[track_caller]
fn assert_json_error(a: &Answer, status: u16, code: &str) {
    assert_eq!(a.status, status, "status; answer: {a:?}");
    assert_eq!(
        a.json.get("errorCode").and_then(Value::as_str),
        Some(code),
        "errorCode; answer: {a:?}"
    );
    assert!(
        a.json.get("errorDescription").is_some_and(Value::is_string),
        "errorDescription; answer: {a:?}"
    );
    assert!(
        a.head
            .to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{a:?}"
    );
}

async fn assert_healthy(addr: SocketAddr) {
    let a = get(addr, "/healthz").await;
    assert_eq!(a.status, 200, "/healthz must answer; got {a:?}");
    assert_eq!(a.json["status"], "ok", "{a:?}");
}

/// `trackmesh_rejected_total{port="http",reason=...}` from `/metrics`.
async fn rejected(addr: SocketAddr, reason: &str) -> f64 {
    let a = get(addr, "/metrics").await;
    assert_eq!(a.status, 200, "/metrics must answer; got {}", a.head);
    let key = format!("trackmesh_rejected_total{{port=\"http\",reason=\"{reason}\"}} ");
    a.body
        .lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The soft limit on open files of a process, from /proc.
fn open_files_limit(pid: &str) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("/proc limits");
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .expect("Max open files line")
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc fd")
        .count()
}

#[derive(Debug, PartialEq, Eq)]
enum Fate {
    /// Answered with the JSON 503 and closed.
    Refused,
    /// Closed (or reset) without an answer: a deadline.
    Closed,
    /// Still open when the test stopped waiting.
    Open,
    /// Some other answer.
    Other(String),
}

/// Holds an idle connection (sends nothing) until the node answers or closes it.
async fn idle_connection(mut stream: TcpStream) -> Fate {
    let mut out = Vec::new();
    let read = async {
        let mut limited = (&mut stream).take(MAX_ANSWER);
        limited.read_to_end(&mut out).await
    };
    match tokio::time::timeout(WAIT, read).await {
        Err(_) => Fate::Open,
        Ok(_) if out.is_empty() => Fate::Closed,
        Ok(_) => match parse_answer(&out) {
            Some(a)
                if a.status == 503 && a.json["errorCode"] == "temporarily_unavailable_error" =>
            {
                Fate::Refused
            }
            _ => Fate::Other(String::from_utf8_lossy(&out).into_owned()),
        },
    }
}

/// Trickles a never-ending request head one byte at a time, until the node closes the
/// connection (or answers) or the bound on bytes is reached.
async fn slowloris(mut stream: TcpStream, path: String) -> Fate {
    let head = format!("POST {path} HTTP/1.1\r\nHost: node\r\nX-Pad: ");
    let bytes = head.bytes().chain(std::iter::repeat(b'a'));
    // 600 bytes at 50 ms: up to 30 s, far beyond any header timeout used here.
    for b in bytes.take(600) {
        if stream.write_all(&[b]).await.is_err() {
            return Fate::Closed;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut buf = [0u8; 1024];
        match stream.try_read(&mut buf) {
            Ok(0) => return Fate::Closed,
            Ok(n) => {
                return match parse_answer(&buf[..n]) {
                    Some(a) if a.status == 503 => Fate::Refused,
                    _ => Fate::Other(String::from_utf8_lossy(&buf[..n]).into_owned()),
                };
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return Fate::Closed,
        }
    }
    Fate::Open
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slowloris_connections_are_closed_or_refused_while_healthz_answers() {
    let node = start_node(&[
        "--http-max-connections",
        "64",
        "--http-max-connections-per-ip",
        "32",
        "--http-probe-reserve",
        "4",
        "--http-header-timeout",
        "1s",
        "--http-idle-timeout",
        "2s",
    ]);
    let addr = node.http_addr();
    let api_path = format!("/v1/apps/{}/sessions/new", node.app_id());

    // Slow request heads first (the node accepts in order), so they hold normal slots and meet
    // the header timeout.
    let mut lorises = Vec::new();
    for _ in 0..20 {
        let stream = TcpStream::connect(addr).await.expect("slowloris connect");
        lorises.push(tokio::spawn(slowloris(stream, api_path.clone())));
    }

    // 2,000 idle connections, as many at once as this process may open.
    const IDLE: usize = 2000;
    let own_limit = open_files_limit("self");
    let at_once = usize::try_from(own_limit.saturating_sub(256))
        .unwrap_or(IDLE)
        .clamp(64, IDLE);
    let permits = Arc::new(Semaphore::new(at_once));
    let mut idle = Vec::with_capacity(IDLE);
    for i in 0..IDLE {
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore open");
        let stream = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("idle connection {i}: {e}"));
        idle.push(tokio::spawn(async move {
            let fate = idle_connection(stream).await;
            drop(permit);
            fate
        }));
        if i % 500 == 0 {
            // The node keeps answering probes while the connections pile up.
            assert_healthy(addr).await;
        }
    }
    assert_healthy(addr).await;
    let api_at_cap = get(addr, &api_path).await;
    // Either refused at the cap or, if the idle ones were closed already, answered by the API:
    // never anything without a JSON body.
    assert!(api_at_cap.json.get("errorCode").is_some(), "{api_at_cap:?}");

    let mut fates = std::collections::BTreeMap::<String, usize>::new();
    for task in idle {
        let fate = task.await.expect("idle task");
        assert!(
            matches!(fate, Fate::Refused | Fate::Closed),
            "every idle connection is refused or closed; one was {fate:?}"
        );
        *fates.entry(format!("{fate:?}")).or_default() += 1;
    }
    for task in lorises {
        let fate = task.await.expect("slowloris task");
        assert!(
            matches!(fate, Fate::Refused | Fate::Closed),
            "every slowloris connection is refused or closed; one was {fate:?}"
        );
    }
    assert!(
        fates.get("Refused").copied().unwrap_or(0) > 0,
        "connections beyond the caps get the JSON 503: {fates:?}"
    );
    assert_healthy(addr).await;
    for reason in ["conn_limit_ip", "header_timeout", "idle_timeout"] {
        assert!(
            rejected(addr, reason).await > 0.0,
            "trackmesh_rejected_total counts {reason}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_per_ip_cap_refuses_well_before_fd_exhaustion() {
    // A process: its file descriptors are counted on their own.
    let node = TestNode::start_process(&[]).expect("starting the trackmesh node");
    let addr = node.http_addr();
    const DEFAULT_PER_IP: usize = 256;
    const DEFAULT_RESERVE: usize = 16;

    let mut held = Vec::with_capacity(DEFAULT_PER_IP);
    for i in 0..DEFAULT_PER_IP {
        held.push(
            TcpStream::connect(addr)
                .await
                .unwrap_or_else(|e| panic!("connection {i}: {e}")),
        );
    }
    // The last connection within the cap is served normally...
    let missing = format!("/v1/apps/{}/sessions/{}", node.app_id(), random_hex32());
    let last = held.last_mut().expect("held connections");
    last.write_all(
        format!(
            "GET {missing} HTTP/1.1\r\nHost: node\r\nAuthorization: Bearer {}\r\n\r\n",
            node.app_secret()
        )
        .as_bytes(),
    )
    .await
    .expect("request within the cap");
    // Keep-alive: the connection (and its slot) stays open after the answer.
    let within = read_one_answer(last).await;
    assert_ne!(within.status, 503, "{within:?}");
    assert!(within.json.get("errorCode").is_some(), "{within:?}");

    // ...the next one is refused at once with the JSON 503...
    let refused = get(addr, &missing).await;
    assert_json_error(&refused, 503, "temporarily_unavailable_error");
    // ...while probes still answer.
    assert_healthy(addr).await;

    // Many more connections cost the node no file descriptors.
    let mut extra = Vec::new();
    for _ in 0..300 {
        extra.push(tokio::spawn(idle_connection(
            TcpStream::connect(addr)
                .await
                .expect("connect beyond the cap"),
        )));
    }
    let mut others = Vec::new();
    for task in extra.drain(..300 - DEFAULT_RESERVE) {
        let fate = task.await.expect("idle task");
        if fate != Fate::Refused {
            others.push(fate);
        }
    }
    assert!(
        others.is_empty(),
        "all but the reserve are refused; not: {others:?}"
    );
    let fds = open_fds(node.pid());
    let limit = open_files_limit(&node.pid().to_string());
    assert!(
        fds < DEFAULT_PER_IP + DEFAULT_RESERVE + 100,
        "the node holds {fds} file descriptors with {} connections open against it",
        DEFAULT_PER_IP + 300
    );
    assert!(
        ((DEFAULT_PER_IP + DEFAULT_RESERVE) as u64) < limit / 2,
        "the per-IP cap is well below the node's open-file limit {limit}"
    );
    assert!(
        rejected(addr, "conn_limit_ip").await >= (300 - DEFAULT_RESERVE) as f64,
        "refusals are counted"
    );
    drop(held);
    for task in extra {
        task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_layer_errors_have_json_bodies() {
    let node = start_node(&["--http-body-timeout", "1s"]);
    let addr = node.http_addr();

    // A request line hyper cannot parse.
    let a = exchange(addr, b"GARBAGE\r\n\r\n").await;
    assert_json_error(&a, 400, "bad_request");
    // A malformed header line.
    let a = exchange(addr, b"GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n").await;
    assert_json_error(&a, 400, "bad_request");

    // Oversized headers.
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: node\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let a = exchange(addr, big.as_bytes()).await;
    assert_json_error(&a, 431, "header_too_large");
    // Too many headers.
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let a = exchange(
        addr,
        format!("GET /healthz HTTP/1.1\r\nHost: node\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert_json_error(&a, 431, "header_too_large");

    // A request target too long for any API path.
    let a = get(addr, &format!("/v1/apps/{}", "a".repeat(5000))).await;
    assert_json_error(&a, 414, "uri_too_long");

    // A body that never finishes arriving.
    let a = stalled_body(&node, "sessions/new", "application/json", "{\"sessionDesc").await;
    assert_json_error(&a, 408, "request_timeout");

    // On WHIP, WHEP and streams paths the same refusals are RFC 9457 problems.
    let a = get(addr, &format!("/v1/apps/a/whip/{}", "s".repeat(5000))).await;
    assert_problem_answer(&a, 414);
    let a = stalled_body(&node, "whip/s", "application/sdp", "v=0").await;
    assert_problem_answer(&a, 408);

    // A body whose chunked framing is broken is a bad request, not one "too large".
    let a = broken_chunked_body(&node, "sessions/new", "application/json").await;
    assert_json_error(&a, 400, "decoding_error");
    let a = broken_chunked_body(&node, "whip/s", "application/sdp").await;
    assert_problem_answer(&a, 400);

    // Unknown paths were already JSON; they stay so.
    let a = get(addr, "/no/such/path").await;
    assert_json_error(&a, 404, "not_found");

    for reason in [
        "bad_request",
        "header_too_large",
        "uri_too_long",
        "body_timeout",
    ] {
        assert!(
            rejected(addr, reason).await > 0.0,
            "trackmesh_rejected_total counts {reason}"
        );
    }
    // And the node is fine.
    assert_healthy(addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_answers_is_disconnected() {
    let node = start_node(&["--http-body-timeout", "1s"]);
    let addr = node.http_addr();
    // Pipelined requests for the demo page (about 24 KiB each): far more answer than the
    // socket buffers hold, while the client reads nothing.
    const REQUESTS: usize = 2000;
    const PAGE: usize = 24 * 1024;
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(&b"GET / HTTP/1.1\r\nHost: node\r\n\r\n".repeat(REQUESTS))
        .await
        .expect("send pipelined requests");
    trackmesh_tests::poll_until(
        "the node to give up on the client that does not read",
        WAIT,
        Duration::from_millis(100),
        async || {
            if rejected(addr, "write_timeout").await > 0.0 {
                Ok(())
            } else {
                anyhow::bail!("no write_timeout counted yet")
            }
        },
    )
    .await
    .expect("write_timeout counted");
    // What was sent before it gave up can still be read; then the connection ends, short of
    // the answers asked for.
    let mut received = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received += n,
            }
            if received > REQUESTS * PAGE * 2 {
                return;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection was not closed");
    assert!(
        received < REQUESTS * PAGE,
        "the node stopped sending: {received} bytes arrived"
    );
    assert_healthy(addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_reserve_every_connection_over_the_cap_gets_the_503() {
    let node = start_node(&[
        "--http-max-connections-per-ip",
        "2",
        "--http-probe-reserve",
        "0",
    ]);
    let addr = node.http_addr();
    let _held = [
        TcpStream::connect(addr).await.expect("first"),
        TcpStream::connect(addr).await.expect("second"),
    ];
    // Refused as accepted, before the client sends anything.
    for i in 0..50 {
        let stream = TcpStream::connect(addr)
            .await
            .expect("connect over the cap");
        let fate = idle_connection(stream).await;
        assert_eq!(fate, Fate::Refused, "connection {i} over the cap");
    }
    // With no reserve, probes are refused too (the documented cost of --http-probe-reserve 0).
    let a = get(addr, "/healthz").await;
    assert_json_error(&a, 503, "temporarily_unavailable_error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_may_idle_longer_than_the_header_timeout() {
    let node = start_node(&["--http-header-timeout", "1s", "--http-idle-timeout", "60s"]);
    let addr = node.http_addr();
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let probe = b"GET /healthz HTTP/1.1\r\nHost: node\r\n\r\n";
    for round in 0..2 {
        stream.write_all(probe).await.expect("request");
        let a = read_one_answer(&mut stream).await;
        assert_eq!(a.status, 200, "round {round}: {a:?}");
        // Quiet between requests for longer than the header timeout, well within the idle one:
        // the header clock starts at a request's first byte, not when the connection goes idle.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert_eq!(rejected(addr, "header_timeout").await, 0.0);
}

/// Opens a WebSocket to `/v1/ws` over a plain socket and returns it once the 101 has arrived.
async fn open_websocket(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(
            b"GET /v1/ws HTTP/1.1\r\nHost: node\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .expect("upgrade request");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    let read = async {
        while !head.ends_with(b"\r\n\r\n") && head.len() < 4096 {
            match stream.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
    };
    let _ = tokio::time::timeout(WAIT, read).await;
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "the upgrade: {head:?}");
    stream
}

/// An upgraded WebSocket keeps its connection's place under the caps: hyper ends the HTTP
/// connection at the 101, and the socket must not then be free of the per-client cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_count_against_the_connection_caps_while_open() {
    let node = start_node(&[
        "--http-max-connections-per-ip",
        "2",
        "--http-probe-reserve",
        "0",
    ]);
    let addr = node.http_addr();
    let sockets = [open_websocket(addr).await, open_websocket(addr).await];
    let stream = TcpStream::connect(addr)
        .await
        .expect("connect over the cap");
    assert_eq!(
        idle_connection(stream).await,
        Fate::Refused,
        "two open WebSockets fill a cap of 2"
    );
    drop(sockets);
    // Their places come back once the node has seen them close.
    let mut healthy = None;
    for _ in 0..100 {
        let a = get(addr, "/healthz").await;
        if a.status == 200 {
            healthy = Some(a);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        healthy.is_some(),
        "the closed WebSockets' places are given back"
    );
}
