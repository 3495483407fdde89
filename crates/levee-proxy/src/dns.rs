//! Nodes given by name (`host:port`): resolved when a config is loaded and
//! again every `dns_refresh`, never on a data-plane worker.
//!
//! ```text
//! load / reload ──resolve every name──▶ Resolved ──▶ ProxyState::build_resolved
//! control thread, per backend with names:
//!   every dns_refresh ──resolve──▶ answers changed? ──▶ Shared::rebuild (same config,
//!                                                      new addresses) ──▶ swap
//! ```
//!
//! An address change is applied like a reload of the same config: a new
//! state is built from the live one, so nodes that stay keep their
//! breakers, health, return ramps and pools; new addresses ramp in;
//! requests in flight to a removed address finish on the state they
//! started with. A failed lookup keeps the last known addresses.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::LookupIpStrategy;
use hickory_resolver::TokioResolver;
use levee_config::{BackendConfig, Config, NodeAddr};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::state::{ProxyState, Shared};

/// Longest wait for one name's answer; past it the lookup counts as failed
/// (and the last known addresses stay).
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a name has no addresses now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("lookup failed: {0}")]
    Lookup(String),
    #[error("the name has no addresses")]
    Empty,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// What a resolver returns.
pub type ResolveFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<SocketAddr>, ResolveError>> + Send + 'a>>;

/// Turns a node name into addresses. The system resolver in production; a
/// scripted one in tests.
pub trait Resolve: fmt::Debug + Send + Sync + 'static {
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> ResolveFuture<'a>;
}

/// The system's resolver configuration (`/etc/resolv.conf`, `/etc/hosts`),
/// asked through hickory, an async resolver. Each lookup reads the
/// configuration afresh, so an edited resolv.conf applies at the next
/// refresh, and no resolver state is tied to one runtime. IPv4 addresses
/// are used when a name has any, else IPv6 ones, so a dual-stack node is
/// not counted twice.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> ResolveFuture<'a> {
        Box::pin(async move {
            let mut builder =
                TokioResolver::builder_tokio().map_err(|e| ResolveError::Lookup(e.to_string()))?;
            builder.options_mut().ip_strategy = LookupIpStrategy::Ipv4thenIpv6;
            let resolver = builder
                .build()
                .map_err(|e| ResolveError::Lookup(e.to_string()))?;
            let lookup = resolver
                .lookup_ip(host)
                .await
                .map_err(|e| ResolveError::Lookup(e.to_string()))?;
            Ok(lookup.iter().map(|ip| SocketAddr::new(ip, port)).collect())
        })
    }
}

/// One name's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub node: NodeAddr,
    /// Sorted, without duplicates, never empty when `Ok`.
    pub result: Result<Vec<SocketAddr>, ResolveError>,
}

/// Resolves `names` (the `host:port` ones; addresses are skipped)
/// concurrently, each within [`RESOLVE_TIMEOUT`].
pub async fn resolve<'a>(
    names: impl IntoIterator<Item = &'a NodeAddr>,
    resolver: &dyn Resolve,
) -> Vec<Answer> {
    let mut distinct: Vec<&NodeAddr> = names
        .into_iter()
        .filter(|n| matches!(n, NodeAddr::Name { .. }))
        .collect();
    distinct.sort();
    distinct.dedup();
    let lookups = distinct.into_iter().map(|node| async move {
        let NodeAddr::Name { host, port } = node else {
            return None;
        };
        let result =
            match tokio::time::timeout(RESOLVE_TIMEOUT, resolver.resolve(host, *port)).await {
                Ok(Ok(mut addrs)) => {
                    addrs.sort();
                    addrs.dedup();
                    if addrs.is_empty() {
                        Err(ResolveError::Empty)
                    } else {
                        Ok(addrs)
                    }
                }
                Ok(Err(e)) => Err(e),
                Err(_) => Err(ResolveError::Timeout(RESOLVE_TIMEOUT)),
            };
        Some(Answer {
            node: node.clone(),
            result,
        })
    });
    futures_util::future::join_all(lookups)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Every node name of `config`.
pub fn names(config: &Config) -> impl Iterator<Item = &NodeAddr> {
    config.backends.iter().flat_map(|b| b.nodes.iter())
}

/// The last known addresses of each node name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved(BTreeMap<NodeAddr, Vec<SocketAddr>>);

impl Resolved {
    /// The addresses `node` stands for: itself for `ip:port`, the last good
    /// answer for a name (none if it never resolved).
    pub fn addrs<'a>(&'a self, node: &'a NodeAddr) -> &'a [SocketAddr] {
        match node {
            NodeAddr::Ip(addr) => std::slice::from_ref(addr),
            NodeAddr::Name { .. } => self.0.get(node).map_or(&[], Vec::as_slice),
        }
    }

    /// These addresses with `answers` applied (a failed answer keeps what
    /// was known), keeping only the names `config` still has.
    pub fn updated(&self, answers: &[Answer], config: &Config) -> Resolved {
        let mut next = self.0.clone();
        for a in answers {
            if let Ok(addrs) = &a.result {
                next.insert(a.node.clone(), addrs.clone());
            }
        }
        next.retain(|node, _| names(config).any(|n| n == node));
        Resolved(next)
    }
}

/// One address of a backend to send requests to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// How `/status` and metrics name it: the address, or for a name
    /// `host:port@address`.
    pub label: String,
    /// The name it was found by, if any: the default TLS server name.
    pub host: Option<String>,
}

/// The addresses of `cfg`'s nodes, in config order; an address reached by
/// two entries is listed once (the first), so it is not weighted twice.
pub fn endpoints(cfg: &BackendConfig, resolved: &Resolved) -> Vec<Endpoint> {
    let mut out: Vec<Endpoint> = Vec::with_capacity(cfg.nodes.len());
    for node in &cfg.nodes {
        for addr in resolved.addrs(node) {
            if out.iter().any(|e| e.addr == *addr) {
                continue;
            }
            let (label, host) = match node {
                NodeAddr::Ip(addr) => (addr.to_string(), None),
                NodeAddr::Name { host, .. } => (format!("{node}@{addr}"), Some(host.clone())),
            };
            out.push(Endpoint {
                addr: *addr,
                label,
                host,
            });
        }
    }
    out
}

/// Counts each answer on the backends that list its name (only on
/// `backend` when given), and logs failures.
pub fn record(state: &ProxyState, answers: &[Answer], backend: Option<&str>) {
    let backends = state.backends.iter().zip(&state.config.backends);
    for (backend, cfg) in backends.filter(|(b, _)| backend.is_none_or(|name| b.name == name)) {
        let mine: Vec<&Answer> = answers
            .iter()
            .filter(|a| cfg.nodes.contains(&a.node))
            .collect();
        if mine.is_empty() {
            continue;
        }
        let mut failing = Vec::new();
        for a in mine {
            match &a.result {
                Ok(_) => backend.stats.dns.record_success(),
                Err(e) => {
                    warn!(backend = %backend.name, node = %a.node, error = %e, "node name did not resolve; keeping its last known addresses");
                    failing.push((a.node.to_string(), e.to_string()));
                }
            }
        }
        backend.stats.dns.record_failures(failing);
    }
}

/// Starts the refresh task of backend `cfg`, if it has node names.
pub fn spawn_refresh(
    shared: &Arc<Shared>,
    cfg: &BackendConfig,
    resolver: &Arc<dyn Resolve>,
) -> Option<JoinHandle<()>> {
    if cfg.nodes.iter().all(|n| n.ip().is_some()) {
        return None;
    }
    let shared = Arc::clone(shared);
    let resolver = Arc::clone(resolver);
    let names: Vec<NodeAddr> = cfg.nodes.clone();
    let every = cfg.dns_refresh;
    let backend = cfg.name.clone();
    Some(tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            refresh(&shared, &names, &*resolver, &backend).await;
        }
    }))
}

/// Resolves `names` once and publishes a rebuilt state if any answer
/// changed the addresses; true if it did.
pub async fn refresh(
    shared: &Shared,
    names: &[NodeAddr],
    resolver: &dyn Resolve,
    backend: &str,
) -> bool {
    let answers = resolve(names, resolver).await;
    record(&shared.current(), &answers, Some(backend));
    let rebuilt = shared
        .rebuild(|live| {
            let resolved = live.resolved.updated(&answers, &live.config);
            (resolved != *live.resolved).then(|| {
                ProxyState::build_resolved(
                    Arc::clone(&live.config),
                    live.workers,
                    Some(live),
                    Arc::new(resolved),
                )
            })
        })
        .await;
    if rebuilt {
        let state = shared.current();
        let nodes: Vec<&str> = state
            .backends
            .iter()
            .filter(|b| b.name == backend)
            .flat_map(|b| b.nodes.nodes().iter().map(|n| n.stats.addr.as_str()))
            .collect();
        info!(%backend, ?nodes, "node addresses changed; nodes updated");
    }
    rebuilt
}

#[cfg(test)]
#[path = "dns_tests.rs"]
mod tests;
