//! A small network lab made of Linux network namespaces, for tests that need a real network
//! between nodes (partitions, packet loss) rather than 127.0.0.1.
//!
//! Layout of one [`Lab`] (all names carry the test process's pid and a per-process counter, so
//! concurrent runs never share anything):
//!
//! ```text
//!   ns "…-a"  eth0 10.201.0.1 ─┐
//!   ns "…-b"  eth0 10.201.0.2 ─┼─ br0 in ns "…-br" (a plain L2 bridge)
//!   ns "…-c"  eth0 10.201.0.3 ─┘   (the clients: the test re-runs itself here)
//! ```
//!
//! Node A runs in `a`, node B in `b`, and the test's clients (str0m peers, the HTTP client) in
//! `c`, by re-running the test binary there with `ip netns exec` ([`Lab::run_inner`]). Faults
//! are iptables rules inside `a` and `b` only, so the clients always reach both nodes. Nothing is
//! created in the host's namespace, and [`Lab`]'s `Drop` kills what still runs inside and deletes
//! every namespace, also when the test fails.
//!
//! Needs root, iproute2 and iptables (`tests/all.sh` installs iptables). When any of them is
//! missing, [`Lab::create`] fails with the reason: the tests fail, they do not skip.

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};

use crate::node::Place;
use crate::peer::PEER_IP_ENV;

/// Env: set (to the lab's description) in the re-run test process inside the clients' namespace.
pub const LAB_ENV: &str = "TRACKMESH_NETNS_LAB";
/// Prefix of every namespace a lab creates.
const NS_PREFIX: &str = "tmlab";
/// How long one `ip`/`iptables` command may take.
const CMD_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound on the output kept from an inner test run.
const MAX_INNER_OUTPUT: usize = 256 * 1024;

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// The roles of a lab's namespaces that hold a process: nodes `a`, `b` and the clients `c`.
const HOSTS: [(&str, Ipv4Addr); 3] = [
    ("a", Ipv4Addr::new(10, 201, 0, 1)),
    ("b", Ipv4Addr::new(10, 201, 0, 2)),
    ("c", Ipv4Addr::new(10, 201, 0, 3)),
];

/// Which namespaces a lab has and their addresses; passed to the re-run test in [`LAB_ENV`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabSpec {
    /// `(role, namespace, ip)` for `a`, `b` and `c`.
    hosts: Vec<(String, String, IpAddr)>,
}

impl LabSpec {
    /// `a=NS@IP,b=NS@IP,c=NS@IP`.
    fn encode(&self) -> String {
        self.hosts
            .iter()
            .map(|(r, ns, ip)| format!("{r}={ns}@{ip}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn decode(s: &str) -> anyhow::Result<LabSpec> {
        let mut hosts = Vec::new();
        for part in s.split(',').take(HOSTS.len()) {
            let (role, rest) = part
                .split_once('=')
                .ok_or_else(|| anyhow!("{LAB_ENV}: {part:?} has no '='"))?;
            let (ns, ip) = rest
                .split_once('@')
                .ok_or_else(|| anyhow!("{LAB_ENV}: {part:?} has no '@'"))?;
            let ip: IpAddr = ip
                .parse()
                .with_context(|| format!("{LAB_ENV}: {ip:?} is not an IP"))?;
            hosts.push((role.to_string(), ns.to_string(), ip));
        }
        let spec = LabSpec { hosts };
        for (role, _) in HOSTS {
            spec.host(role)?;
        }
        Ok(spec)
    }

    /// The lab this process was re-run in ([`LAB_ENV`]). An error when it was not: inner tests
    /// are only meaningful when started by their outer test.
    pub fn from_env() -> anyhow::Result<LabSpec> {
        let v = std::env::var(LAB_ENV).map_err(|_| {
            anyhow!(
                "{LAB_ENV} is not set: this test runs only inside the lab its outer test builds"
            )
        })?;
        LabSpec::decode(&v)
    }

    fn host(&self, role: &str) -> anyhow::Result<&(String, String, IpAddr)> {
        self.hosts
            .iter()
            .find(|(r, _, _)| r == role)
            .ok_or_else(|| anyhow!("the lab has no host {role:?}"))
    }

    /// Where node `role` (`a` or `b`) runs.
    pub fn place(&self, role: &str) -> anyhow::Result<Place> {
        let (_, ns, ip) = self.host(role)?;
        Ok(Place {
            netns: ns.clone(),
            ip: *ip,
        })
    }

    pub fn ip(&self, role: &str) -> anyhow::Result<IpAddr> {
        Ok(self.host(role)?.2)
    }

    /// Run `iptables ARGS` inside node `role`'s namespace.
    pub fn iptables(&self, role: &str, args: &[&str]) -> anyhow::Result<String> {
        let (_, ns, _) = self.host(role)?;
        let mut full = vec!["netns", "exec", ns.as_str(), "iptables", "-w", "5"];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Cut `a` and `b` apart: each drops everything from and to the other. The clients still
    /// reach both.
    pub fn partition(&self) -> anyhow::Result<()> {
        for (me, other) in [("a", "b"), ("b", "a")] {
            for rule in partition_rules(self.ip(other)?) {
                self.iptables(me, &prepend("-I", &rule))?;
            }
        }
        Ok(())
    }

    /// Remove the rules of [`LabSpec::partition`].
    pub fn heal(&self) -> anyhow::Result<()> {
        for (me, other) in [("a", "b"), ("b", "a")] {
            for rule in partition_rules(self.ip(other)?) {
                self.iptables(me, &prepend("-D", &rule))?;
            }
        }
        Ok(())
    }

    /// Cut one direction only: `from` can no longer send to `to` (`to` still reaches `from`).
    pub fn block_one_way(&self, from: &str, to: &str) -> anyhow::Result<()> {
        self.iptables(from, &prepend("-I", &one_way_rule(self.ip(to)?)))
            .map(drop)
    }

    /// Remove the rule of [`LabSpec::block_one_way`].
    pub fn unblock_one_way(&self, from: &str, to: &str) -> anyhow::Result<()> {
        self.iptables(from, &prepend("-D", &one_way_rule(self.ip(to)?)))
            .map(drop)
    }

    /// Packets dropped so far by the partition rules of node `role`.
    pub fn partition_drops(&self, role: &str) -> anyhow::Result<u64> {
        let mut total = 0;
        for chain in ["INPUT", "OUTPUT"] {
            total += counter(
                &self.iptables(role, &["-L", chain, "-v", "-n", "-x"])?,
                "DROP",
            )?;
        }
        Ok(total)
    }

    /// Drop packets at random with probability `p` on the UDP traffic that `a` and `b` send each
    /// other on `port` (sent from or to it), in both directions; a counting rule before it
    /// counts what was offered. Returns nothing; see [`LabSpec::loss_counts`].
    pub fn add_loss(&self, port: u16, p: f64) -> anyhow::Result<()> {
        ensure!(
            (0.0..=1.0).contains(&p),
            "loss probability {p} not in 0..=1"
        );
        let port = port.to_string();
        let p = format!("{p:.4}");
        for (me, other) in [("a", "b"), ("b", "a")] {
            let dst = self.ip(other)?.to_string();
            let m = [
                "-p",
                "udp",
                "-d",
                dst.as_str(),
                "-m",
                "multiport",
                "--ports",
                port.as_str(),
            ];
            // A rule without a target only counts.
            self.iptables(me, &[&["-A", "OUTPUT"][..], &m[..]].concat())?;
            let drop = [
                &["-A", "OUTPUT"][..],
                &m[..],
                &[
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    p.as_str(),
                    "-j",
                    "DROP",
                ][..],
            ]
            .concat();
            self.iptables(me, &drop)?;
        }
        Ok(())
    }

    /// Remove the rules of [`LabSpec::add_loss`] (every `OUTPUT` rule of `a` and `b`).
    pub fn clear_loss(&self) -> anyhow::Result<()> {
        for role in ["a", "b"] {
            self.iptables(role, &["-F", "OUTPUT"])?;
        }
        Ok(())
    }

    /// (packets offered, packets dropped) by the [`LabSpec::add_loss`] rules of both nodes.
    pub fn loss_counts(&self) -> anyhow::Result<(u64, u64)> {
        let (mut offered, mut dropped) = (0, 0);
        for role in ["a", "b"] {
            let table = self.iptables(role, &["-L", "OUTPUT", "-v", "-n", "-x"])?;
            offered += counter(&table, "")?;
            dropped += counter(&table, "DROP")?;
        }
        Ok((offered, dropped))
    }
}

/// The two rules that cut one node off from `other`, without the `-I`/`-D` verb.
fn partition_rules(other: IpAddr) -> [Vec<String>; 2] {
    let o = other.to_string();
    [
        vec![
            "INPUT".into(),
            "-s".into(),
            o.clone(),
            "-j".into(),
            "DROP".into(),
        ],
        vec!["OUTPUT".into(), "-d".into(), o, "-j".into(), "DROP".into()],
    ]
}

/// The rule that stops one node sending to `other`, without the verb.
fn one_way_rule(other: IpAddr) -> Vec<String> {
    vec![
        "OUTPUT".into(),
        "-d".into(),
        other.to_string(),
        "-j".into(),
        "DROP".into(),
    ]
}

fn prepend<'a>(verb: &'a str, rule: &'a [String]) -> Vec<&'a str> {
    std::iter::once(verb)
        .chain(rule.iter().map(String::as_str))
        .collect()
}

/// Sum of the packet counters of the rules in `iptables -L -v -n -x` output whose target is
/// `target` ("" for rules without a target).
fn counter(listing: &str, target: &str) -> anyhow::Result<u64> {
    let mut sum = 0;
    for line in listing.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // pkts bytes target prot opt in out source destination ... ; a rule without a target
        // has its protocol (a number or name, never a target) in the third column.
        let Some(pkts) = cols.first().and_then(|c| c.parse::<u64>().ok()) else {
            continue;
        };
        let Some(third) = cols.get(2) else { continue };
        let has_target = matches!(*third, "DROP" | "ACCEPT" | "REJECT" | "RETURN");
        let matches = if target.is_empty() {
            !has_target
        } else {
            *third == target
        };
        if matches {
            sum += pkts;
        }
    }
    Ok(sum)
}

/// Run a command (bounded by [`CMD_TIMEOUT`]); its stdout, or an error with its stderr.
fn run(prog: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = run_bounded(
        Command::new(prog).args(args).stdin(Stdio::null()),
        CMD_TIMEOUT,
    )
    .with_context(|| format!("running {prog} {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{prog} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Spawn, wait at most `timeout` (then SIGKILL), and collect the output (bounded).
fn run_bounded(cmd: &mut Command, timeout: Duration) -> anyhow::Result<Output> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning")?;
    // Read both pipes on threads so that a chatty child never blocks on a full pipe.
    let out_t = child
        .stdout
        .take()
        .map(|r| std::thread::spawn(move || read_tail(r)));
    let err_t = child
        .stderr
        .take()
        .map(|r| std::thread::spawn(move || read_tail(r)));
    let deadline = Instant::now() + timeout;
    let max_polls = timeout.as_millis() / 20 + 2;
    let mut status = None;
    for _ in 0..max_polls {
        if let Some(s) = child.try_wait().context("waiting for the child")? {
            status = Some(s);
            break;
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = match status {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("did not finish within {timeout:?} (killed)");
        }
    };
    let stdout = out_t.and_then(|t| t.join().ok()).unwrap_or_default();
    let stderr = err_t.and_then(|t| t.join().ok()).unwrap_or_default();
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Everything `r` yields until EOF, keeping only the last [`MAX_INNER_OUTPUT`] bytes.
fn read_tail(mut r: impl std::io::Read) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > 2 * MAX_INNER_OUTPUT {
                    kept.drain(..kept.len() - MAX_INNER_OUTPUT);
                }
            }
        }
    }
    if kept.len() > MAX_INNER_OUTPUT {
        kept.drain(..kept.len() - MAX_INNER_OUTPUT);
    }
    kept
}

/// Is the process with this pid alive (its /proc entry exists)?
fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// A network lab; see the module documentation. Everything is removed on drop.
pub struct Lab {
    spec: LabSpec,
    /// Every namespace created so far (the bridge's last), deleted on drop.
    namespaces: Vec<String>,
}

impl Lab {
    /// Build the lab. Fails (with the reason) without root, iproute2 or iptables.
    pub fn create(test: &str) -> anyhow::Result<Lab> {
        preflight()?;
        remove_stale_labs();
        let pid = std::process::id();
        let n = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
        let base = format!("{NS_PREFIX}-{pid}-{n}-{}", short(test));
        let mut lab = Lab {
            spec: LabSpec { hosts: Vec::new() },
            namespaces: Vec::new(),
        };
        let br = format!("{base}-br");
        lab.add_ns(&br)?;
        run("ip", &["-n", &br, "link", "add", "br0", "type", "bridge"])?;
        run("ip", &["-n", &br, "link", "set", "br0", "up"])?;
        for (role, ip) in HOSTS {
            let ns = format!("{base}-{role}");
            lab.add_ns(&ns)?;
            let port = format!("p{role}");
            // Created inside `ns` with its peer moved straight to the bridge's namespace, so no
            // interface ever appears in the host's namespace.
            run(
                "ip",
                &[
                    "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port,
                    "netns", &br,
                ],
            )?;
            run("ip", &["-n", &br, "link", "set", &port, "master", "br0"])?;
            run("ip", &["-n", &br, "link", "set", &port, "up"])?;
            run(
                "ip",
                &["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
            )?;
            run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
            run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
            lab.spec.hosts.push((role.to_string(), ns, IpAddr::V4(ip)));
        }
        Ok(lab)
    }

    fn add_ns(&mut self, ns: &str) -> anyhow::Result<()> {
        run("ip", &["netns", "add", ns])?;
        // Bridge first in the list would be deleted first; keep it last.
        self.namespaces.insert(0, ns.to_string());
        Ok(())
    }

    pub fn spec(&self) -> &LabSpec {
        &self.spec
    }

    /// The namespaces of this lab (for checks that they are gone after drop).
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// Re-run this test binary's test `inner` (exact name, `#[ignore]`d) inside the clients'
    /// namespace, with [`LAB_ENV`] and [`PEER_IP_ENV`] set, bounded by `timeout`. Returns its
    /// combined output; an error unless it ran exactly one test and that test passed.
    pub fn run_inner(&self, inner: &str, timeout: Duration) -> anyhow::Result<String> {
        let exe = std::env::current_exe().context("finding the test binary")?;
        let (_, ns, ip) = self.spec.host("c")?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(&exe)
            .args([
                "--exact",
                inner,
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(LAB_ENV, self.spec.encode())
            .env(PEER_IP_ENV, ip.to_string())
            .stdin(Stdio::null());
        let out = run_bounded(&mut cmd, timeout)
            .with_context(|| format!("running {inner} inside the lab"))?;
        let text = format!(
            "---- stdout of {inner} ----\n{}\n---- stderr of {inner} ----\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        // Exactly one test ran and passed: a name that matches nothing would "pass" with 0.
        let one_passed = stdout.contains("test result: ok. 1 passed");
        if !out.status.success() || !one_passed {
            bail!(
                "{inner} inside the lab failed ({}, one test passed: {one_passed}):\n{text}",
                out.status
            );
        }
        Ok(text)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            kill_inside(ns);
            if let Err(e) = run("ip", &["netns", "del", ns]) {
                eprintln!("netns lab: deleting {ns}: {e:#}");
            }
        }
    }
}

/// SIGKILL what still runs in `ns` (only the test's own children can be there).
fn kill_inside(ns: &str) {
    let Ok(pids) = run("ip", &["netns", "pids", ns]) else {
        return;
    };
    for pid in pids.split_whitespace().take(1000) {
        if pid.parse::<u32>().is_ok() {
            let _ = run("kill", &["-KILL", pid]);
        }
    }
}

/// Labs left behind by test processes that died without running `Drop` (SIGKILL): their pid
/// (the name's second field) is gone. Only this module's own prefix is touched.
fn remove_stale_labs() {
    let Ok(list) = run("ip", &["netns", "list"]) else {
        return;
    };
    for line in list.lines().take(10_000) {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let mut parts = name.split('-');
        if parts.next() != Some(NS_PREFIX) {
            continue;
        }
        let Some(pid) = parts.next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !pid_alive(pid) {
            kill_inside(name);
            let _ = run("ip", &["netns", "del", name]);
        }
    }
}

/// Root, iproute2 with netns support and iptables, or an error that says what is missing.
fn preflight() -> anyhow::Result<()> {
    let uid = run("id", &["-u"]).context("finding the user id")?;
    ensure!(
        uid.trim() == "0",
        "the network lab needs root (network namespaces, iptables); uid is {}",
        uid.trim()
    );
    run("ip", &["netns", "list"]).context("iproute2 with netns support is needed")?;
    run("iptables", &["--version"])
        .context("iptables is needed: apt-get install -y iptables (tests/all.sh does this)")?;
    Ok(())
}

/// A test name cut to a short namespace-name fragment.
fn short(test: &str) -> String {
    test.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(12)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_roundtrip() {
        let spec = LabSpec {
            hosts: HOSTS
                .iter()
                .map(|(r, ip)| (r.to_string(), format!("ns-{r}"), IpAddr::V4(*ip)))
                .collect(),
        };
        let back = LabSpec::decode(&spec.encode()).expect("decodes");
        assert_eq!(back, spec);
        assert_eq!(
            back.place("b").expect("b"),
            Place {
                netns: "ns-b".into(),
                ip: "10.201.0.2".parse().expect("ip")
            }
        );
        assert!(LabSpec::decode("a=x@10.0.0.1").is_err());
    }

    #[test]
    fn counts_iptables_rules() {
        let listing = "\
Chain OUTPUT (policy ACCEPT 12 packets, 900 bytes)
    pkts      bytes target     prot opt in     out     source               destination
     100     9000            17   --  *      *       0.0.0.0/0            10.201.0.2           multiport ports 7703
      11      990 DROP       17   --  *      *       0.0.0.0/0            10.201.0.2           multiport ports 7703 statistic mode random probability 0.10000000009
";
        assert_eq!(counter(listing, "").expect("count"), 100);
        assert_eq!(counter(listing, "DROP").expect("count"), 11);
        assert_eq!(counter(listing, "ACCEPT").expect("count"), 0);
    }
}
