//! `gossip-scale` as a person runs it: a real `--help`, and one line (no backtrace) on bad input.

use std::process::Command;

fn gossip_scale(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gossip-scale"))
        .args(args)
        .output()
        .expect("run gossip-scale")
}

#[test]
fn help_names_every_option() {
    let out = gossip_scale(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for option in [
        "--members",
        "--window",
        "--transport",
        "--digest",
        "--interval-ms",
        "--phi",
    ] {
        assert!(text.contains(option), "{text}");
    }
}

#[test]
fn bad_input_is_one_line_and_exit_code_2() {
    let out = gossip_scale(&["--members", "2"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("member counts must be within"), "{err}");
}
