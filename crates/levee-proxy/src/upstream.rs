//! Backends, their nodes, the keep-alive pool to each node, and selection.
//!
//! Each backend has one HTTP/1.1 client whose pool is keyed by node address,
//! so every node gets its own keep-alive pool, bounded by
//! `pool_max_idle_per_node` and closed after `pool_idle_timeout`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use levee_config::BackendConfig;
use levee_resilience::Bulkhead;
use levee_telemetry::NodeStats;

use crate::body::RequestBody;

pub type NodeClient = Client<HttpConnector, RequestBody>;

/// One app node.
#[derive(Debug)]
pub struct Node {
    pub addr: SocketAddr,
    /// `addr` as a URI authority, built once so each request only clones it.
    pub authority: Authority,
    pub stats: Arc<NodeStats>,
}

/// A pool of nodes behind one bulkhead.
#[derive(Debug)]
pub struct Backend {
    pub name: String,
    pub nodes: Vec<Node>,
    pub bulkhead: Arc<Bulkhead>,
    pub client: NodeClient,
    pub timeout: Duration,
    pub queue_timeout: Duration,
    pub body_idle_timeout: Duration,
    next: AtomicUsize,
}

impl Backend {
    pub fn new(cfg: &BackendConfig) -> Self {
        let nodes = cfg
            .nodes
            .iter()
            .map(|addr| Node {
                addr: *addr,
                authority: authority_of(*addr),
                stats: Arc::new(NodeStats::new(&cfg.name, &addr.to_string())),
            })
            .collect();
        Self {
            name: cfg.name.clone(),
            nodes,
            bulkhead: Arc::new(Bulkhead::new(cfg.max_in_flight, cfg.max_queue)),
            client: node_client(cfg),
            timeout: cfg.timeout,
            queue_timeout: cfg.queue_timeout,
            body_idle_timeout: cfg.body_idle_timeout,
            next: AtomicUsize::new(0),
        }
    }

    /// The next node in round-robin order; `None` only for a backend with no
    /// nodes, which the config rejects.
    pub fn pick(&self) -> Option<&Node> {
        if self.nodes.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.nodes.len();
        self.nodes.get(i)
    }
}

fn authority_of(addr: SocketAddr) -> Authority {
    // A SocketAddr always renders as a valid authority ("1.2.3.4:80", "[::1]:80").
    addr.to_string()
        .parse()
        .unwrap_or_else(|_| Authority::from_static("invalid.invalid"))
}

fn node_client(cfg: &BackendConfig) -> NodeClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(cfg.connect_timeout));
    connector.set_nodelay(true);
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(cfg.pool_idle_timeout)
        .pool_max_idle_per_host(cfg.pool_max_idle_per_node)
        // The client's Host header is forwarded as is.
        .set_host(false)
        .build(connector)
}
