//! The node binary's configuration layers, as an operator meets them: a flag beats its
//! `TRACKMESH_*` variable, which beats the `--config` file, which beats the default.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use trackmesh_tests::node::{free_udp_addr, node_binary, parse_ready_fields};

#[test]
fn flag_beats_env_beats_file() {
    let dir = std::env::temp_dir().join(format!("tm-layers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("node.toml");
    let gossip = free_udp_addr().expect("a free UDP port");
    std::fs::write(
        &file,
        format!(
            "http = \"127.0.0.1:0\"\nmedia = \"127.0.0.1:0\"\nrelay = \"127.0.0.1:0\"\n\
             gossip = \"{gossip}\"\nregion = \"from-file\"\nnode-id = \"from-file\"\n\
             app = [\"fileapp:s\"]\n"
        ),
    )
    .expect("write config");

    let mut child = Command::new(node_binary())
        .args(["--config"])
        .arg(&file)
        .args(["--node-id", "from-flag"])
        .env("TRACKMESH_NODE_ID", "from-env")
        .env("TRACKMESH_REGION", "from-env")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting the node binary (cargo build -p trackmesh-node --bins)");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().take(100) {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut ready = None;
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(20)) {
        if let Some(fields) = parse_ready_fields(&line) {
            ready = Some(fields);
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);

    let ready = ready.expect("the node printed its ready line");
    let field = |k: &str| ready.get(k).map(String::as_str);
    assert_eq!(
        field("node"),
        Some("from-flag"),
        "a flag beats env and file"
    );
    assert_eq!(field("region"), Some("from-env"), "env beats the file");
    let gossip = gossip.to_string();
    assert_eq!(
        field("gossip"),
        Some(gossip.as_str()),
        "the file beats the default"
    );
}

/// A node that cannot start says why once, on one line, and exits with failure.
#[test]
fn a_fatal_error_is_one_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port to take");
    let http = taken.local_addr().expect("addr").to_string();
    let gossip = free_udp_addr().expect("a free UDP port").to_string();
    let out = Command::new(node_binary())
        .args([
            "--http",
            &http,
            "--media",
            "127.0.0.1:0",
            "--relay",
            "127.0.0.1:0",
        ])
        .args(["--gossip", &gossip])
        .stdin(Stdio::null())
        .output()
        .expect("running the node binary");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let fatal: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("binding the HTTP listener"))
        .collect();
    assert_eq!(fatal.len(), 1, "{err}");
    assert!(fatal[0].starts_with("trackmesh: "), "{err}");
}

/// Logs written to a file or a pipe carry no colour codes.
#[test]
fn logs_to_a_file_have_no_ansi_codes() {
    // A process node's stderr goes to a file.
    let node = trackmesh_tests::TestNode::start_process(&[]).expect("node");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !node.log().contains("serving") {
        assert!(
            std::time::Instant::now() < deadline,
            "no serving line: {}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = node.log();
    assert!(!log.contains('\x1b'), "ANSI codes in a log file: {log}");
}
