//! The test bed as `deploy/sim/run.sh` made it, handed to the driver as a JSON file: regions
//! (the clients' address in each, the uplink that cuts it off), nodes (namespace, address,
//! the bridge port that cuts it off) and the "internet" namespace where iptables counts.

use std::net::IpAddr;
use std::path::Path;

use anyhow::{Context, ensure};
use serde::Deserialize;

/// Largest topology file read.
const MAX_FILE: u64 = 256 * 1024;
pub const MAX_NODES: usize = 64;

#[derive(Clone, Debug, Deserialize)]
pub struct Topology {
    /// The namespace routing between regions (delay, loss, counters).
    pub core: String,
    /// The one-way delay matrix, as given to the delay process.
    pub matrix: String,
    pub regions: Vec<Region>,
    pub nodes: Vec<Node>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Region {
    pub name: String,
    /// The region's LAN, e.g. `10.90.1.0/24`.
    pub lan: String,
    /// The clients' own address on this region's LAN.
    pub client_ip: IpAddr,
    /// The uplink's end in the core namespace: down cuts the region off.
    pub uplink_dev: String,
    /// The core's route back to the LAN (re-added after the uplink returns).
    pub uplink_via: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Node {
    pub name: String,
    pub region: String,
    pub ns: String,
    pub ip: IpAddr,
    /// The region namespace holding the node's bridge port, and the port: down cuts the node off.
    pub port_ns: String,
    pub port_dev: String,
}

impl Topology {
    pub fn load(path: &Path) -> anyhow::Result<Topology> {
        let meta =
            std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
        ensure!(meta.len() <= MAX_FILE, "{} is too large", path.display());
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let t: Topology =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        t.check()?;
        Ok(t)
    }

    fn check(&self) -> anyhow::Result<()> {
        ensure!(
            self.regions.len() >= 2,
            "a test bed needs at least 2 regions"
        );
        ensure!(
            (1..=MAX_NODES).contains(&self.nodes.len()),
            "1..={MAX_NODES} nodes"
        );
        for n in &self.nodes {
            ensure!(
                self.regions.iter().any(|r| r.name == n.region),
                "node {} is in unknown region {}",
                n.name,
                n.region
            );
        }
        for r in &self.regions {
            ensure!(
                self.nodes.iter().any(|n| n.region == r.name),
                "region {} has no node",
                r.name
            );
        }
        Ok(())
    }

    pub fn region(&self, name: &str) -> Option<&Region> {
        self.regions.iter().find(|r| r.name == name)
    }

    pub fn nodes_in(&self, region: &str) -> Vec<&Node> {
        self.nodes.iter().filter(|n| n.region == region).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_checks() {
        let json = r#"{"core":"c","matrix":"0,20;20,0",
          "regions":[{"name":"r1","lan":"10.90.1.0/24","client_ip":"10.90.1.200","uplink_dev":"up1","uplink_via":"10.91.1.2"},
                     {"name":"r2","lan":"10.90.2.0/24","client_ip":"10.90.2.200","uplink_dev":"up2","uplink_via":"10.91.2.2"}],
          "nodes":[{"name":"r1a","region":"r1","ns":"n1","ip":"10.90.1.1","port_ns":"r1","port_dev":"pa"},
                   {"name":"r2a","region":"r2","ns":"n2","ip":"10.90.2.1","port_ns":"r2","port_dev":"pa"}]}"#;
        let t: Topology = serde_json::from_str(json).expect("parses");
        t.check().expect("valid");
        assert_eq!(t.nodes_in("r2").len(), 1);
        let mut bad = t.clone();
        bad.nodes.pop();
        assert!(bad.check().is_err(), "a region without a node");
    }
}
