//! The connection behind the handle: one Redis server (`redis_url`) or a Redis Cluster
//! (`redis_cluster_nodes`). Both speak redis-rs's `ConnectionLike`, so every caller's
//! commands and scripts run unchanged on either.
//!
//! On a Cluster, redis-rs's cluster client does the cluster work: it learns the slot map
//! from any seed node, routes each command (EVALSHA by its first key) to the slot's
//! master, follows MOVED and ASK redirections during resharding, waits out TRYAGAIN, and
//! after a master dies reconnects and refreshes the map until the promoted replica
//! answers. Retries are kept short: the handle bounds every call by its own timeout, so a
//! retry that cannot finish inside it is worthless.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// Where the shared Redis is.
#[derive(Clone)]
pub enum Target {
    /// One server (`redis_url`).
    Single(redis::Client),
    /// A Redis Cluster, found through these seed nodes (`redis_cluster_nodes`).
    Cluster(Box<ClusterClient>),
}

impl Target {
    /// What the config asks for: `redis_cluster_nodes` (a Cluster), else `redis_url` (one
    /// server), else none. Errors name the field.
    pub fn from_config(
        redis_url: Option<&str>,
        redis_cluster_nodes: Option<&[&str]>,
    ) -> Result<Option<Target>, String> {
        match (redis_cluster_nodes, redis_url) {
            (Some(nodes), _) => Target::cluster(nodes).map(Some),
            (None, Some(url)) => Target::single(url).map(Some),
            (None, None) => Ok(None),
        }
    }

    /// Parses `redis_url`; the error names the field and never echoes the URL (it may hold
    /// a password).
    pub fn single(url: &str) -> Result<Target, String> {
        redis::Client::open(url)
            .map(Target::Single)
            .map_err(|e| format!("redis_url: {e}"))
    }

    /// Parses `redis_cluster_nodes` (at least one seed; the rest of the cluster is learnt
    /// from it).
    pub fn cluster(nodes: &[&str]) -> Result<Target, String> {
        for (i, node) in nodes.iter().enumerate() {
            redis::Client::open(*node).map_err(|e| format!("redis_cluster_nodes[{i}]: {e}"))?;
        }
        ClusterClient::builder(nodes.iter().copied())
            .connection_timeout(super::CONNECT_TIMEOUT)
            .response_timeout(super::CALL_TIMEOUT)
            // Redirections (MOVED, ASK), TRYAGAIN while a slot migrates, reconnects: each
            // retry waits 10 to 100 ms, so a few fit inside the handle's call timeout.
            .retries(6)
            .min_retry_wait(10)
            .max_retry_wait(100)
            .retry_wait_formula(10, 2)
            .build()
            .map(|c| Target::Cluster(Box::new(c)))
            .map_err(|e| format!("redis_cluster_nodes: {e}"))
    }

    /// One connection attempt; the handle retries with back-off until one stands.
    pub(super) async fn connect(&self) -> redis::RedisResult<Connection> {
        match self {
            Target::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(super::CONNECT_TIMEOUT))
                    .set_response_timeout(Some(super::CALL_TIMEOUT))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_secs(2));
                ConnectionManager::new_with_config(client.clone(), config)
                    .await
                    .map(Connection::Single)
            }
            Target::Cluster(client) => client
                .get_async_connection()
                .await
                .map(|c| Connection::Cluster(Box::new(c))),
        }
    }
}

/// A cheap-to-clone connection to either kind; commands and scripts take it as any
/// redis-rs connection (`query_async(&mut conn)`, `invoke_async(&mut conn)`).
#[derive(Clone)]
pub enum Connection {
    Single(ConnectionManager),
    Cluster(Box<ClusterConnection>),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}
