//! A throwaway Redis Cluster for tests and `bench/scale-out`: real `redis-server` processes
//! in cluster mode on free 127.0.0.1 ports, joined with `redis-cli --cluster create`, each
//! in its own folder under one temp dir, all killed and removed when the value is dropped.
//! The machine's own Redis is never touched.
//!
//! Std only (plus `tempfile`), because the gateway crate's own cluster test includes this
//! file by path (`gateway/tests/redis_cluster.rs`) rather than depending on this crate.
//!
//! Settings chosen for failover tests: `cluster-node-timeout` 1000 ms (a dead master is
//! failed over in about 2-3 s) and `cluster-require-full-coverage no` (while one master's
//! slots have no owner, the other slots keep answering: the setting a production cluster
//! serving a gateway should have too).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    dead_code,
    reason = "test support: fail loudly; each includer uses part of it"
)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a dead master's replica may take to be promoted before a wait gives up.
pub const FAILOVER_LIMIT: Duration = Duration::from_secs(30);

/// One `redis-server` of the cluster.
struct Node {
    port: u16,
    bus_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// A running cluster; dropped: every node killed, every file removed.
pub struct RedisCluster {
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

/// Whether `redis-server` and `redis-cli` are installed. With `CI=true` a missing server is
/// a failure (`scripts/test` installs it), elsewhere the caller skips.
pub fn available() -> bool {
    let found = ["redis-server", "redis-cli"].iter().all(|bin| {
        Command::new(bin)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    if !found && ci {
        panic!(
            "redis-server / redis-cli are missing and CI=true: run the tests through scripts/test"
        );
    }
    if !found {
        eprintln!("skipping: redis-server / redis-cli not installed (scripts/test installs them)");
    }
    found
}

/// Two distinct ports free on 127.0.0.1 right now.
fn free_ports() -> (u16, u16) {
    let a = TcpListener::bind("127.0.0.1:0").expect("bind");
    let b = TcpListener::bind("127.0.0.1:0").expect("bind");
    (
        a.local_addr().expect("addr").port(),
        b.local_addr().expect("addr").port(),
    )
}

/// `redis-cli -p PORT ARGS...`; stdout, or the error text when it could not run.
pub fn cli(port: u16, args: &[&str]) -> String {
    match Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            text
        }
        Err(e) => format!("redis-cli: {e}"),
    }
}

fn wait_until(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ok() {
        assert!(
            started.elapsed() < limit,
            "redis cluster: {what} after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Node {
    fn start(&mut self) {
        let log = std::fs::File::create(self.dir.join("server.log")).expect("log file");
        let child = Command::new("redis-server")
            .current_dir(&self.dir)
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-port", &self.bus_port.to_string()])
            .args(["--cluster-config-file", "nodes.conf"])
            .args(["--cluster-node-timeout", "1000"])
            .args(["--cluster-require-full-coverage", "no"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let port = self.port;
        wait_until(Duration::from_secs(10), "a node does not answer", || {
            cli(port, &["PING"]).trim() == "PONG"
        });
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl RedisCluster {
    /// `masters` masters with `replicas` replicas each, joined and in sync. Waits (up to
    /// a minute) until every node agrees on the slots and every replica has its master's
    /// data, so a failover right away has a replica to promote.
    pub fn start(masters: usize, replicas: usize) -> RedisCluster {
        let dir = tempfile::Builder::new()
            .prefix("tollgate-redis-cluster-")
            .tempdir()
            .expect("temp dir");
        let mut nodes = Vec::new();
        for _ in 0..masters * (1 + replicas) {
            let (port, bus_port) = free_ports();
            let node_dir = dir.path().join(port.to_string());
            std::fs::create_dir_all(&node_dir).expect("node dir");
            nodes.push(Node {
                port,
                bus_port,
                dir: node_dir,
                child: None,
            });
        }
        let mut cluster = RedisCluster { nodes, _dir: dir };
        for node in &mut cluster.nodes {
            node.start();
        }
        let addrs: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let replicas_arg = replicas.to_string();
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", &replicas_arg, "--cluster-yes"]);
        let out = cli(cluster.nodes[0].port, &args);
        assert!(
            out.contains("All 16384 slots covered"),
            "redis-cli --cluster create failed:\n{out}"
        );
        cluster.wait_settled();
        cluster
    }

    /// Waits until every live node reports `cluster_state:ok`, agrees on which nodes are
    /// masters, and every replica's link to its master is up.
    pub fn wait_settled(&self) {
        let live: Vec<u16> = self.live_ports();
        wait_until(Duration::from_secs(60), "did not settle", || {
            live.iter().all(|p| {
                let info = cli(*p, &["CLUSTER", "INFO"]);
                if !info.contains("cluster_state:ok") {
                    return false;
                }
                let replication = cli(*p, &["INFO", "replication"]);
                !replication.contains("role:slave") || replication.contains("master_link_status:up")
            }) && {
                // Every node sees the same set of masters with slots.
                let views: Vec<Vec<u16>> = live.iter().map(|p| self.masters_seen_by(*p)).collect();
                views.windows(2).all(|w| w[0] == w[1])
            }
        });
    }

    fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect()
    }

    /// Ports of the masters holding slots, as node `port` sees them (sorted).
    fn masters_seen_by(&self, port: u16) -> Vec<u16> {
        let mut masters: Vec<u16> = cli(port, &["CLUSTER", "NODES"])
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let flags = fields.get(2)?;
                if !flags.contains("master") || flags.contains("fail") || fields.len() < 9 {
                    return None;
                }
                node_port(fields.get(1)?)
            })
            .collect();
        masters.sort_unstable();
        masters
    }

    /// `redis://127.0.0.1:PORT` of every node (what `redis_cluster_nodes` lists).
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// The ports of every node.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// A port of a node that is running.
    pub fn any_port(&self) -> u16 {
        self.live_ports()[0]
    }

    /// The hash slot of `key` (a hash tag such as `{ten_x}` counts as the key's).
    pub fn slot(&self, key: &str) -> u16 {
        cli(self.any_port(), &["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("CLUSTER KEYSLOT {key} did not answer a number"))
    }

    /// The port of the master serving `slot`, as a live node sees it now.
    pub fn master_of_slot(&self, slot: u16) -> u16 {
        let nodes = cli(self.any_port(), &["CLUSTER", "NODES"]);
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            for range in &fields[8..] {
                if range.starts_with('[') {
                    continue;
                }
                let (lo, hi) = match range.split_once('-') {
                    Some((lo, hi)) => (lo.parse().unwrap_or(u16::MAX), hi.parse().unwrap_or(0)),
                    None => {
                        let s = range.parse().unwrap_or(u16::MAX);
                        (s, s)
                    }
                };
                if (lo..=hi).contains(&slot)
                    && let Some(port) = node_port(fields[1])
                {
                    return port;
                }
            }
        }
        panic!("no live master serves slot {slot}:\n{nodes}");
    }

    /// The node id of the node on `port`.
    pub fn node_id(&self, port: u16) -> String {
        cli(port, &["CLUSTER", "MYID"]).trim().to_owned()
    }

    /// The live master serving `slot` as a live node sees it now; `None` while it has none
    /// (its master failed and no replica was promoted yet).
    pub fn owner(&self, slot: u16) -> Option<u16> {
        owner_seen_by(self.any_port(), slot)
    }

    /// SIGKILL the node on `port` (no goodbye to the cluster: a crash).
    pub fn kill(&mut self, port: u16) {
        if let Some(node) = self.nodes.iter_mut().find(|n| n.port == port) {
            node.kill();
        }
    }

    /// Waits until a live master other than `dead` serves `slot` and every live node
    /// agrees (the failover is complete); returns the new master's port.
    pub fn wait_failover(&self, slot: u16, dead: u16) -> u16 {
        let mut master = 0;
        wait_until(FAILOVER_LIMIT, "no replica was promoted", || {
            let owners: Vec<Option<u16>> = self
                .live_ports()
                .iter()
                .map(|p| owner_seen_by(*p, slot))
                .collect();
            match owners.first() {
                Some(Some(first))
                    if *first != dead && owners.iter().all(|o| *o == Some(*first)) =>
                {
                    master = *first;
                    true
                }
                _ => false,
            }
        });
        master
    }

    /// Starts the killed node on `port` again (it rejoins as a replica of whoever took
    /// its slots) and waits until the cluster settled.
    pub fn restart(&mut self, port: u16) {
        if let Some(node) = self.nodes.iter_mut().find(|n| n.port == port) {
            node.start();
        }
        self.wait_settled();
    }

    /// Moves `slot` to the master on `to`, keys included, the way `redis-cli --cluster
    /// reshard` does. `between` runs while the slot is half migrated (source MIGRATING,
    /// target IMPORTING, some keys moved: clients get ASK redirections and TRYAGAIN).
    pub fn move_slot(&self, slot: u16, to: u16, between: impl FnOnce()) {
        let from = self.master_of_slot(slot);
        assert_ne!(from, to, "slot {slot} is already on {to}");
        let (from_id, to_id) = (self.node_id(from), self.node_id(to));
        let slot_s = slot.to_string();
        let ok = |out: String| assert!(out.trim() == "OK", "cluster setslot: {out}");
        ok(cli(
            to,
            &["CLUSTER", "SETSLOT", &slot_s, "IMPORTING", &from_id],
        ));
        ok(cli(
            from,
            &["CLUSTER", "SETSLOT", &slot_s, "MIGRATING", &to_id],
        ));
        let keys: Vec<String> = cli(from, &["CLUSTER", "GETKEYSINSLOT", &slot_s, "1000"])
            .lines()
            .map(str::to_owned)
            .filter(|k| !k.is_empty())
            .collect();
        // Half of the keys first, so the slot really is split while `between` runs.
        let (first, rest) = keys.split_at(keys.len() / 2);
        let migrate = |batch: &[String]| {
            if batch.is_empty() {
                return;
            }
            let to_s = to.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &to_s, "", "0", "5000", "KEYS"];
            args.extend(batch.iter().map(String::as_str));
            let out = cli(from, &args);
            assert!(out.trim() == "OK", "MIGRATE: {out}");
        };
        migrate(first);
        between();
        migrate(rest);
        for port in self.live_ports() {
            let out = cli(port, &["CLUSTER", "SETSLOT", &slot_s, "NODE", &to_id]);
            assert!(out.trim() == "OK", "CLUSTER SETSLOT NODE on {port}: {out}");
        }
        self.wait_settled();
    }

    /// Every key on the master on `port` (a test's own small data set).
    pub fn keys_on(&self, port: u16) -> Vec<String> {
        cli(port, &["--scan"])
            .lines()
            .map(str::to_owned)
            .filter(|k| !k.is_empty())
            .collect()
    }

    /// Ports of the masters now serving slots.
    pub fn masters(&self) -> Vec<u16> {
        self.masters_seen_by(self.any_port())
    }

    /// The folder a node keeps its log in.
    pub fn node_dir(&self, port: u16) -> Option<&Path> {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .map(|n| n.dir.as_path())
    }
}

/// The port of `slot`'s master as node `port` sees it (none while it has no live master).
fn owner_seen_by(port: u16, slot: u16) -> Option<u16> {
    let nodes = cli(port, &["CLUSTER", "NODES"]);
    for line in nodes.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 9 || !fields[2].contains("master") {
            continue;
        }
        let serves = fields[8..].iter().any(|range| {
            let (lo, hi) = match range.split_once('-') {
                Some((lo, hi)) => (lo.parse().unwrap_or(u16::MAX), hi.parse().unwrap_or(0)),
                None => {
                    let s = range.parse().unwrap_or(u16::MAX);
                    (s, s)
                }
            };
            (lo..=hi).contains(&slot)
        });
        if serves {
            if fields[2].contains("fail") {
                return None;
            }
            return node_port(fields[1]);
        }
    }
    None
}

/// `127.0.0.1:6379@16379` -> 6379.
fn node_port(addr: &str) -> Option<u16> {
    addr.split('@').next()?.rsplit(':').next()?.parse().ok()
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
    }
}
