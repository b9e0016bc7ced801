//! Clusters of `trackmesh` nodes on 127.0.0.1 (in this process unless asked for processes) and
//! typed views of the admin API (`/admin/cluster`, `/admin/relay`) used by the cluster tests.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde_json::Value;
use trackmesh_node::cluster::relay::RelayTestLoss;

use crate::api::CallsClient;
use crate::node::{ClusterOpts, PLACED_GOSSIP_PORT, Place, TestNode, free_udp_addr, random_hex32};

/// How long [`Cluster::start`] waits for every node to see every other node live.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(15);

/// The admin API's views, as the node writes them.
pub use trackmesh_admin_api::{
    ClusterView, Downstream, Member, RelayLink as Link, RelayView, Upstream,
};

/// Decode an admin answer, keeping the raw body in the error.
fn decode<T: serde::de::DeserializeOwned>(what: &str, v: Value) -> anyhow::Result<T> {
    serde_json::from_value(v.clone()).with_context(|| format!("decoding {what}: {v}"))
}

impl TestNode {
    /// `GET /admin/cluster`, typed.
    pub async fn cluster_view(&self) -> anyhow::Result<ClusterView> {
        decode("/admin/cluster", self.admin("cluster").await?)
    }

    /// `GET /admin/relay`, typed.
    pub async fn relay_view(&self) -> anyhow::Result<RelayView> {
        decode("/admin/relay", self.admin("relay").await?)
    }
}

/// Poll `f` every `step` until it returns `Ok`, for at most `timeout` (bounded by a poll count
/// too). `Err` means "not yet" and should describe the state seen; the last one is reported on
/// timeout. Returns the value and the time from the call until the successful poll began.
pub async fn poll_until<T>(
    what: &str,
    timeout: Duration,
    step: Duration,
    mut f: impl AsyncFnMut() -> anyhow::Result<T>,
) -> anyhow::Result<(T, Duration)> {
    let start = Instant::now();
    let deadline = start + timeout;
    let max_polls = timeout.as_millis() / step.as_millis().max(1) + 2;
    let mut last = None;
    for _ in 0..max_polls {
        let at = start.elapsed();
        match f().await {
            Ok(v) => return Ok((v, at)),
            Err(e) => last = Some(e),
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(step.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
    let last = last.map_or_else(|| "nothing".to_string(), |e| format!("{e:#}"));
    bail!("timed out after {timeout:?} waiting for {what}; last seen: {last}")
}

/// How the nodes of a [`Cluster`] are started.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// Every node seeds every other node (else: the first seeds nobody, the others the first).
    pub seed_all: bool,
    /// Extra arguments for every node.
    pub extra: Vec<String>,
    /// Bound on the wait until all members are live everywhere.
    pub converge_timeout: Duration,
    /// Where each node runs, in `spec` order (missing entries: on the host, 127.0.0.1).
    pub places: Vec<Place>,
    /// Run every node as a child process of the node binary (else in this process, unless
    /// placed): for tests that signal nodes or read their logs.
    pub process: bool,
    /// The relay test hook for every (in-process) node: drops outgoing media datagrams.
    pub relay_test_loss: Option<RelayTestLoss>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            seed_all: false,
            extra: Vec::new(),
            converge_timeout: CONVERGE_TIMEOUT,
            places: Vec::new(),
            process: false,
            relay_test_loss: None,
        }
    }
}

/// N nodes (in this process, or processes) sharing one app, one cluster secret and one admin
/// token. Node ids are the names given to [`Cluster::start`]. Every node is killed on drop.
pub struct Cluster {
    nodes: Vec<(String, TestNode)>,
    app_id: String,
    app_secret: String,
    secret: String,
    admin_token: String,
    extra: Vec<String>,
    /// New nodes run as processes.
    process: bool,
    relay_test_loss: Option<RelayTestLoss>,
}

impl Cluster {
    /// Start nodes `(name, region)`; the first seeds nobody, the others seed the first. Waits
    /// (bounded by [`CONVERGE_TIMEOUT`]) until every node lists every other node live.
    pub async fn start(spec: &[(&str, &str)]) -> anyhow::Result<Cluster> {
        Self::start_with(spec, ClusterConfig::default()).await
    }

    pub async fn start_with(spec: &[(&str, &str)], cfg: ClusterConfig) -> anyhow::Result<Cluster> {
        if spec.is_empty() {
            bail!("a cluster needs at least one node");
        }
        let mut cluster = Cluster {
            nodes: Vec::new(),
            app_id: random_hex32(),
            app_secret: random_hex32(),
            secret: format!("test-cluster-{}", random_hex32()),
            admin_token: format!("admin-{}", random_hex32()),
            extra: cfg.extra.clone(),
            process: cfg.process,
            relay_test_loss: cfg.relay_test_loss,
        };
        // Gossip addresses chosen up front so that every node can seed every other one.
        let mut gossip: Vec<SocketAddr> = (0..spec.len())
            .map(|i| match cfg.places.get(i) {
                Some(p) => Ok(SocketAddr::new(p.ip, PLACED_GOSSIP_PORT)),
                None => free_udp_addr(),
            })
            .collect::<anyhow::Result<_>>()?;
        let t0 = Instant::now();
        for (i, (name, region)) in spec.iter().enumerate() {
            let seeds: Vec<SocketAddr> = if cfg.seed_all {
                gossip
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, a)| *a)
                    .collect()
            } else if i == 0 {
                Vec::new()
            } else {
                vec![cluster.nodes[0].1.gossip_addr()?]
            };
            let mut opts = cluster.opts(name, region, seeds);
            opts.gossip = Some(gossip[i]);
            opts.place = cfg.places.get(i).cloned();
            // A port chosen free up front can be taken by another test before this node binds
            // it: then another free one (a node started earlier that was given the old address
            // as a seed still learns the new one, as this node seeds it).
            let mut attempt = 0;
            let node = loop {
                match TestNode::start_cluster_node(&opts) {
                    Ok(node) => break node,
                    Err(e) if attempt < 3 && opts.place.is_none() && address_in_use(&e) => {
                        attempt += 1;
                        gossip[i] = free_udp_addr()?;
                        eprintln!(
                            "cluster node {name}: gossip port taken meanwhile, now {}",
                            gossip[i]
                        );
                        opts.gossip = Some(gossip[i]);
                    }
                    Err(e) => {
                        return Err(e)
                            .with_context(|| format!("starting cluster node {name} ({region})"));
                    }
                }
            };
            cluster.nodes.push((name.to_string(), node));
        }
        let started = t0.elapsed();
        let converged = cluster.wait_converged(cfg.converge_timeout).await?;
        eprintln!(
            "cluster of {} nodes: nodes ready in {started:?}, all members live everywhere {converged:?} later",
            spec.len()
        );
        Ok(cluster)
    }

    /// Options for a node of this cluster (same app, secret and admin token).
    pub fn opts(&self, name: &str, region: &str, seeds: Vec<SocketAddr>) -> ClusterOpts {
        ClusterOpts {
            node_id: name.to_string(),
            region: region.to_string(),
            seeds,
            secret: self.secret.clone(),
            admin_token: self.admin_token.clone(),
            gossip: None,
            relay: None,
            app: Some((self.app_id.clone(), self.app_secret.clone())),
            extra: self.extra.clone(),
            place: None,
            process: self.process,
            relay_test_loss: self.relay_test_loss,
        }
    }

    /// Start one more node with `opts` (e.g. from [`Cluster::opts`] with another secret) and
    /// manage it with the others. Does not wait for convergence.
    pub fn add(&mut self, name: &str, opts: &ClusterOpts) -> anyhow::Result<&TestNode> {
        if self.nodes.iter().any(|(n, _)| n == name) {
            bail!("the cluster already has a node named {name}");
        }
        let node = TestNode::start_cluster_node(opts)
            .with_context(|| format!("starting cluster node {name}"))?;
        self.nodes.push((name.to_string(), node));
        Ok(&self.nodes[self.nodes.len() - 1].1)
    }

    /// Kill node `name` ([`TestNode::kill`]) and start it again on the same gossip address with
    /// `opts` (whose `gossip` is replaced by the old one), under the same name. Does not wait for
    /// convergence.
    pub fn restart(&mut self, name: &str, opts: &ClusterOpts) -> anyhow::Result<&TestNode> {
        let gossip = self.try_node(name)?.gossip_addr()?;
        let i = self
            .nodes
            .iter()
            .position(|(n, _)| n == name)
            .ok_or_else(|| anyhow!("the cluster has no node named {name}"))?;
        self.nodes[i].1.kill()?;
        let mut opts = opts.clone();
        opts.gossip = Some(gossip);
        self.nodes[i].1 = TestNode::start_cluster_node(&opts)
            .with_context(|| format!("restarting cluster node {name}"))?;
        Ok(&self.nodes[i].1)
    }

    pub fn secret(&self) -> &str {
        &self.secret
    }

    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    pub fn app_id(&self) -> &str {
        &self.app_id
    }

    pub fn app_secret(&self) -> &str {
        &self.app_secret
    }

    /// Names in start order.
    pub fn names(&self) -> Vec<String> {
        self.nodes.iter().map(|(n, _)| n.clone()).collect()
    }

    pub fn try_node(&self, name: &str) -> anyhow::Result<&TestNode> {
        self.nodes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, node)| node)
            .ok_or_else(|| anyhow!("the cluster has no node named {name}"))
    }

    /// The node named `name`; panics when there is none (a bug in the test).
    pub fn node(&self, name: &str) -> &TestNode {
        match self.try_node(name) {
            Ok(n) => n,
            Err(e) => panic!("{e}"),
        }
    }

    pub fn node_mut(&mut self, name: &str) -> &mut TestNode {
        match self.nodes.iter_mut().find(|(n, _)| n == name) {
            Some((_, node)) => node,
            None => panic!("the cluster has no node named {name}"),
        }
    }

    /// The node id of `name` (from its ready line, else the name passed as `--node-id`).
    pub fn id(&self, name: &str) -> String {
        let id = self.node(name).node_id();
        if id.is_empty() {
            name.to_string()
        } else {
            id.to_string()
        }
    }

    /// The name of the node with this node id.
    pub fn name_of(&self, node_id: &str) -> Option<String> {
        self.nodes
            .iter()
            .find(|(n, node)| {
                node.node_id() == node_id || (node.node_id().is_empty() && n == node_id)
            })
            .map(|(n, _)| n.clone())
    }

    /// A Calls API client for the app on node `name`.
    pub fn client(&self, name: &str) -> CallsClient {
        self.node(name).client()
    }

    /// Kill node `name` ([`TestNode::kill`]); returns the instant of the kill.
    pub fn kill(&mut self, name: &str) -> anyhow::Result<Instant> {
        let node = self.node_mut(name);
        node.kill()?;
        Ok(Instant::now())
    }

    /// Names of the nodes not killed by the test.
    pub fn running(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(_, n)| !n.is_killed())
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Wait until every running node lists every other running node as live. Returns how long
    /// it took.
    pub async fn wait_converged(&self, timeout: Duration) -> anyhow::Result<Duration> {
        let names = self.running();
        let ids: Vec<(String, String)> = names.iter().map(|n| (n.clone(), self.id(n))).collect();
        let (_, took) = poll_until(
            "every node to list every other node live in /admin/cluster",
            timeout,
            Duration::from_millis(100),
            async || {
                for name in &names {
                    let view = self.node(name).cluster_view().await?;
                    let missing: Vec<&str> = ids
                        .iter()
                        .filter(|(n, id)| n != name && !view.is_live(id))
                        .map(|(_, id)| id.as_str())
                        .collect();
                    if !missing.is_empty() {
                        bail!("{name} does not list {missing:?} live: {view:?}");
                    }
                }
                Ok(())
            },
        )
        .await?;
        Ok(took)
    }
}

/// Whether starting a node failed because an address it was given was bound meanwhile.
fn address_in_use(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::AddrInUse)
            || c.to_string().contains("Address already in use")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node given a gossip address something else holds fails in a way `start_with` takes
    /// for "taken meanwhile" (and so tries another port), and nothing else does.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_taken_gossip_port_is_recognised() {
        let cluster = Cluster::start(&[("a", "r1")]).await.expect("one node");
        let holder = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut opts = cluster.opts("b", "r1", Vec::new());
        opts.gossip = Some(holder.local_addr().expect("addr"));
        let err = match TestNode::start_cluster_node(&opts) {
            Ok(_) => panic!("the node started on a port held by another socket"),
            Err(e) => e,
        };
        assert!(address_in_use(&err), "{err:#}");
        assert!(!address_in_use(&anyhow::anyhow!("some other failure")));
    }
}
