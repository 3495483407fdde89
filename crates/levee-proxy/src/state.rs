//! The live routing state, built whole from a validated config and published
//! as one `ArcSwap` snapshot, so a reload is validate-then-swap and every
//! request sees one consistent version.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use levee_config::{Config, Priority, RouteConfig};
use levee_resilience::Bulkhead;
use levee_telemetry::{RouteStats, Telemetry, Topology};
use tokio::sync::watch;

use crate::access_log::AccessLog;
use crate::classes::ClassTable;
use crate::dns::Resolved;
use crate::routing::{RouteMatch, RouteTable};
use crate::stack::rate_limit::RouteRateLimit;
use crate::upstream::Backend;

/// A route with its own bulkhead and deadline.
#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub matcher: RouteMatch,
    pub backend: Arc<Backend>,
    /// `backend`'s index in the state's backends.
    pub backend_index: usize,
    pub bulkhead: Option<Arc<Bulkhead>>,
    pub timeout: Duration,
    /// From arrival to the last response byte; `None`: unbounded.
    pub total_timeout: Option<Duration>,
    pub queue_timeout: Duration,
    pub priority: Priority,
    /// The route's own traffic class, else the method decides.
    pub class: Option<usize>,
    /// Request bodies over this many bytes get 413; `None`: no limit.
    pub max_request_body_bytes: Option<u64>,
    /// Idle bound of the tunnels this route opens from now on.
    pub tunnel_idle_timeout: Duration,
    /// `None`: no rate limit.
    pub rate_limit: Option<RouteRateLimit>,
    /// Holds the route's tunnel cap.
    pub stats: Arc<RouteStats>,
}

impl Route {
    /// The traffic class whose breakers this request is judged by.
    pub fn class_of(&self, method: &http::Method) -> usize {
        self.class.unwrap_or_else(|| ClassTable::of_method(method))
    }
}

/// One config version, ready to serve.
#[derive(Debug)]
pub struct ProxyState {
    pub config: Arc<Config>,
    pub routes: Vec<Route>,
    /// `routes` indexed for matching.
    route_table: RouteTable,
    pub backends: Vec<Arc<Backend>>,
    pub classes: ClassTable,
    pub topology: Arc<Topology>,
    /// The addresses the config's node names stood for when it was built.
    pub resolved: Arc<Resolved>,
    /// Data-plane workers (each node has a pool per worker).
    pub workers: usize,
    /// The access log, when `log.access` is not `off`: carried over from
    /// the previous state while its target stays; a new target is opened by
    /// whoever builds the state ([`AccessLog::open`]) and set here.
    pub access_log: Option<Arc<AccessLog>>,
}

impl ProxyState {
    /// Builds every route, backend and pool of `config` for `workers`
    /// data-plane workers. With `previous` (the state being replaced by a
    /// reload), what belongs to a route, backend or node that stays is
    /// carried over: bulkheads (resized), counters, retry budgets, and each
    /// node's breakers, health, return ramp, load estimate and idle
    /// connections. Node names keep the addresses `previous` knew for them
    /// (none, without one): see [`ProxyState::build_resolved`].
    pub fn build(config: Arc<Config>, workers: usize, previous: Option<&ProxyState>) -> Self {
        let resolved = previous.map_or_else(Default::default, |p| Arc::clone(&p.resolved));
        Self::build_resolved(config, workers, previous, resolved)
    }

    /// [`ProxyState::build`] with `resolved` as the addresses of the
    /// config's node names.
    pub fn build_resolved(
        config: Arc<Config>,
        workers: usize,
        previous: Option<&ProxyState>,
        resolved: Arc<Resolved>,
    ) -> Self {
        let classes = ClassTable::new(
            config
                .routes
                .iter()
                .filter_map(|r| r.breaker_class.as_deref()),
        );
        let backends: Vec<Arc<Backend>> = config
            .backends
            .iter()
            .map(|b| {
                let old = previous.and_then(|p| p.backends.iter().find(|o| o.name == b.name));
                Arc::new(Backend::build(
                    b,
                    &resolved,
                    &classes,
                    workers,
                    old.map(|o| &**o),
                ))
            })
            .collect();
        let old_routes: HashMap<&str, &Route> = previous
            .map(|p| p.routes.iter().map(|r| (r.name.as_str(), r)).collect())
            .unwrap_or_default();
        let routes: Vec<Route> = config
            .routes
            .iter()
            .filter_map(|r| {
                let old = old_routes.get(r.name.as_str()).copied();
                route(r, &backends, &classes, old)
            })
            .collect();
        let route_table = RouteTable::new(routes.iter().map(|r| &r.matcher));
        let topology = Topology {
            version: config.version.clone(),
            routes: routes.iter().map(|r| Arc::clone(&r.stats)).collect(),
            rate_limits: routes
                .iter()
                .map(|r| r.rate_limit.as_ref().map(RouteRateLimit::topology))
                .collect(),
            backends: backends.iter().map(|b| b.topology()).collect(),
            unrouted: previous.map_or_else(Default::default, |p| Arc::clone(&p.topology.unrouted)),
            access_log_dropped: previous.map_or_else(Default::default, |p| {
                Arc::clone(&p.topology.access_log_dropped)
            }),
        };
        let access_log = previous
            .and_then(|p| p.access_log.as_ref())
            .filter(|log| *log.target() == config.log.access)
            .cloned();
        Self {
            config,
            routes,
            route_table,
            backends,
            classes,
            topology: Arc::new(topology),
            resolved,
            workers,
            access_log,
        }
    }

    /// The index of the first route matching the request.
    pub fn route_index(
        &self,
        host: Option<&str>,
        method: &http::Method,
        path: &str,
    ) -> Option<usize> {
        self.route_table.first_match(host, method, path)
    }
}

/// Builds a route; `old` is the route of the same name being replaced,
/// whose bulkhead and tunnel cap (resized) and counters carry over while it keeps its
/// backend and keeps having a bulkhead, and whose rate limit buckets carry
/// over while their config is the same.
fn route(
    cfg: &RouteConfig,
    backends: &[Arc<Backend>],
    classes: &ClassTable,
    old: Option<&Route>,
) -> Option<Route> {
    // The config has already checked that the backend exists.
    let backend = Arc::clone(backends.get(cfg.backend_index)?);
    let kept = old.filter(|o| {
        o.stats.backend == backend.name && o.bulkhead.is_some() == cfg.max_in_flight.is_some()
    });
    let (bulkhead, stats) = match kept {
        Some(o) => {
            if let (Some(b), Some(max)) = (&o.bulkhead, cfg.max_in_flight) {
                b.resize(max, cfg.max_queue);
            }
            // Open tunnels count against the new cap.
            o.stats.tunnels.limit.resize(cfg.max_tunnels, 0);
            (o.bulkhead.clone(), Arc::clone(&o.stats))
        }
        None => {
            let bulkhead = cfg
                .max_in_flight
                .map(|max| Arc::new(Bulkhead::new(max, cfg.max_queue)));
            let stats = Arc::new(RouteStats::new(
                &cfg.name,
                &backend.name,
                bulkhead.clone(),
                cfg.max_tunnels,
            ));
            (bulkhead, stats)
        }
    };
    Some(Route {
        name: cfg.name.clone(),
        matcher: RouteMatch {
            path_prefix: cfg.path_prefix.clone(),
            methods: cfg.methods.clone(),
            host: cfg.host.clone(),
        },
        backend,
        backend_index: cfg.backend_index,
        bulkhead,
        timeout: cfg.timeout,
        total_timeout: cfg.total_timeout,
        queue_timeout: cfg.queue_timeout,
        priority: cfg.priority,
        class: cfg.breaker_class.as_deref().and_then(|c| classes.index(c)),
        max_request_body_bytes: cfg.max_request_body_bytes,
        tunnel_idle_timeout: cfg.tunnel_idle_timeout,
        rate_limit: cfg
            .rate_limit
            .as_ref()
            .map(|rl| RouteRateLimit::build(rl, old.and_then(|o| o.rate_limit.as_ref()))),
        stats,
    })
}

/// What every connection task shares: the live state and the telemetry.
#[derive(Debug)]
pub struct Shared {
    state: ArcSwap<ProxyState>,
    pub telemetry: Arc<Telemetry>,
    /// Held while a new state is built from the live one, so that a reload
    /// and a DNS refresh never build from the same state and lose one
    /// another's change. The request path never takes it.
    building: tokio::sync::Mutex<()>,
    /// Told of every swap (the control thread restarts its tasks on it).
    swapped: watch::Sender<()>,
}

impl Shared {
    pub fn new(state: Arc<ProxyState>, telemetry: Arc<Telemetry>) -> Self {
        telemetry.publish(Arc::clone(&state.topology));
        Self {
            state: ArcSwap::new(state),
            telemetry,
            building: tokio::sync::Mutex::new(()),
            swapped: watch::channel(()).0,
        }
    }

    /// Builds the next state from the live one with `build` and swaps it
    /// in, unless `build` returns `None`; true if it swapped.
    pub async fn rebuild(
        &self,
        build: impl FnOnce(&Arc<ProxyState>) -> Option<ProxyState>,
    ) -> bool {
        let _building = self.building.lock().await;
        match build(&self.current()) {
            Some(next) => {
                self.swap(Arc::new(next));
                true
            }
            None => false,
        }
    }

    /// Changes whenever a new state is swapped in.
    pub fn subscribe(&self) -> watch::Receiver<()> {
        self.swapped.subscribe()
    }

    pub fn state(&self) -> arc_swap::Guard<Arc<ProxyState>> {
        self.state.load()
    }

    /// The live state, owned (for building the next one from it).
    pub fn current(&self) -> Arc<ProxyState> {
        self.state.load_full()
    }

    /// Publishes a new config version; requests in flight keep the one
    /// they started with. Only through [`Shared::rebuild`], which orders
    /// the builders.
    fn swap(&self, state: Arc<ProxyState>) {
        self.telemetry.publish(Arc::clone(&state.topology));
        self.state.store(state);
        self.swapped.send_replace(());
    }
}
