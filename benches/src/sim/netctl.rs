//! What the driver does to the network the script built: cut and restore links, and count
//! relay and gossip bytes per ordered pair of regions with iptables rules in the core.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};

use super::cut::Cut;
use super::topology::Topology;

/// Relay (QUIC) and gossip ports of a placed node (`trackmesh_tests::node`).
const RELAY_PORT: u16 = trackmesh_tests::node::PLACED_RELAY_PORT;
const GOSSIP_PORT: u16 = trackmesh_tests::node::PLACED_GOSSIP_PORT;
/// One `ip` or `iptables` command.
const CMD_TIMEOUT: Duration = Duration::from_secs(10);

/// Take the cut's link down (`up == false`) or bring it back.
pub async fn link(t: &Topology, what: &Cut, up: bool) -> anyhow::Result<()> {
    let state = if up { "up" } else { "down" };
    match what {
        Cut::Node(name) => {
            let n = t
                .nodes
                .iter()
                .find(|n| &n.name == name)
                .ok_or_else(|| anyhow!("no node {name}"))?;
            cmd("ip", &["-n", &n.port_ns, "link", "set", &n.port_dev, state]).await?;
        }
        Cut::Region(name) => {
            let r = t.region(name).ok_or_else(|| anyhow!("no region {name}"))?;
            cmd("ip", &["-n", &t.core, "link", "set", &r.uplink_dev, state]).await?;
            if up {
                // Taking a link down removes the routes through it.
                cmd(
                    "ip",
                    &[
                        "-n",
                        &t.core,
                        "route",
                        "replace",
                        &r.lan,
                        "via",
                        &r.uplink_via,
                        "dev",
                        &r.uplink_dev,
                    ],
                )
                .await?;
            }
        }
    }
    Ok(())
}

/// Counting rules (no target) in the core's FORWARD chain, ahead of loss and delay: UDP to or
/// from the relay and gossip ports, per ordered pair of regions.
pub async fn install_counters(t: &Topology) -> anyhow::Result<()> {
    for a in &t.regions {
        for b in &t.regions {
            if a.name == b.name {
                continue;
            }
            for (what, port) in [("relay", RELAY_PORT), ("gossip", GOSSIP_PORT)] {
                let comment = format!("sim-{what}:{}:{}", a.name, b.name);
                let port = port.to_string();
                cmd(
                    "ip",
                    &[
                        "netns",
                        "exec",
                        &t.core,
                        "iptables",
                        "-w",
                        "5",
                        "-I",
                        "FORWARD",
                        "1",
                        "-s",
                        &a.lan,
                        "-d",
                        &b.lan,
                        "-p",
                        "udp",
                        "-m",
                        "multiport",
                        "--ports",
                        &port,
                        "-m",
                        "comment",
                        "--comment",
                        &comment,
                    ],
                )
                .await?;
            }
        }
    }
    Ok(())
}

/// Bytes counted so far by [`install_counters`]' rules: (kind, from, to) → bytes.
pub async fn read_counters(
    t: &Topology,
) -> anyhow::Result<BTreeMap<(&'static str, String, String), u64>> {
    let listing = cmd(
        "ip",
        &[
            "netns", "exec", &t.core, "iptables", "-w", "5", "-L", "FORWARD", "-v", "-n", "-x",
        ],
    )
    .await?;
    Ok(parse_counters(&listing))
}

fn parse_counters(listing: &str) -> BTreeMap<(&'static str, String, String), u64> {
    let mut out = BTreeMap::new();
    for line in listing.lines().take(10_000) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let Some(bytes) = cols.get(1).and_then(|b| b.parse::<u64>().ok()) else {
            continue;
        };
        let Some(c) = cols.iter().find(|c| c.starts_with("sim-")) else {
            continue;
        };
        let mut parts = c.trim_start_matches("sim-").split(':');
        let kind = match parts.next() {
            Some("relay") => "relay",
            Some("gossip") => "gossip",
            _ => continue,
        };
        if let (Some(a), Some(b)) = (parts.next(), parts.next()) {
            *out.entry((kind, a.to_string(), b.to_string())).or_default() += bytes;
        }
    }
    out
}

/// Run a command (bounded by [`CMD_TIMEOUT`]); its stdout, or an error with its stderr.
async fn cmd(prog: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::time::timeout(
        CMD_TIMEOUT,
        tokio::process::Command::new(prog)
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| anyhow!("{prog} {} took over {CMD_TIMEOUT:?}", args.join(" ")))?
    .with_context(|| format!("running {prog}"))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_counting_rules() {
        let listing = "\
Chain FORWARD (policy ACCEPT 0 packets, 0 bytes)
    pkts      bytes target     prot opt in     out     source               destination
     120   150000            17   --  *      *       10.90.1.0/24         10.90.2.0/24         multiport ports 7703 /* sim-relay:r1:r2 */
       7      900            17   --  *      *       10.90.2.0/24         10.90.1.0/24         multiport ports 7702 /* sim-gossip:r2:r1 */
    1000  9999999 NFQUEUE    0    --  *      *       10.90.0.0/16         10.90.0.0/16         NFQUEUE num 0
";
        let c = parse_counters(listing);
        assert_eq!(c.get(&("relay", "r1".into(), "r2".into())), Some(&150_000));
        assert_eq!(c.get(&("gossip", "r2".into(), "r1".into())), Some(&900));
        assert_eq!(c.len(), 2);
    }
}
