//! The live routing state, built whole from a validated config and published
//! as one `ArcSwap` snapshot, so a reload is validate-then-swap and every
//! request sees one consistent version.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use levee_config::{Config, Priority, RouteConfig};
use levee_resilience::Bulkhead;
use levee_telemetry::{RouteStats, Telemetry, Topology};

use crate::routing::{first_match, RouteMatch};
use crate::upstream::{Backend, ClassTable};

/// A route with its own bulkhead and deadline.
#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub matcher: RouteMatch,
    pub backend: Arc<Backend>,
    pub bulkhead: Option<Arc<Bulkhead>>,
    pub timeout: Duration,
    pub queue_timeout: Duration,
    pub priority: Priority,
    /// The route's own traffic class, else the method decides.
    pub class: Option<usize>,
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
    pub backends: Vec<Arc<Backend>>,
    pub classes: ClassTable,
    pub topology: Arc<Topology>,
}

impl ProxyState {
    /// Builds every route, backend and pool of `config` for `workers`
    /// data-plane workers.
    pub fn build(config: Arc<Config>, workers: usize) -> Self {
        let classes = ClassTable::new(
            config
                .routes
                .iter()
                .filter_map(|r| r.breaker_class.as_deref()),
        );
        let backends: Vec<Arc<Backend>> = config
            .backends
            .iter()
            .map(|b| Arc::new(Backend::new(b, &classes, workers)))
            .collect();
        let routes: Vec<Route> = config
            .routes
            .iter()
            .filter_map(|r| route(r, &backends, &classes))
            .collect();
        let topology = Topology {
            version: config.version.clone(),
            routes: routes.iter().map(|r| Arc::clone(&r.stats)).collect(),
            backends: backends.iter().map(|b| Arc::clone(&b.stats)).collect(),
            unrouted: Default::default(),
        };
        Self {
            config,
            routes,
            backends,
            classes,
            topology: Arc::new(topology),
        }
    }

    /// The first route matching the request.
    pub fn route(&self, host: Option<&str>, method: &http::Method, path: &str) -> Option<&Route> {
        let i = first_match(self.routes.iter().map(|r| &r.matcher), host, method, path)?;
        self.routes.get(i)
    }
}

fn route(cfg: &RouteConfig, backends: &[Arc<Backend>], classes: &ClassTable) -> Option<Route> {
    // The config has already checked that the backend exists.
    let backend = Arc::clone(backends.get(cfg.backend_index)?);
    let bulkhead = cfg
        .max_in_flight
        .map(|max| Arc::new(Bulkhead::new(max, cfg.max_queue)));
    let stats = Arc::new(RouteStats::new(&cfg.name, &backend.name, bulkhead.clone()));
    Some(Route {
        name: cfg.name.clone(),
        matcher: RouteMatch {
            path_prefix: cfg.path_prefix.clone(),
            methods: cfg.methods.clone(),
            host: cfg.host.clone(),
        },
        backend,
        bulkhead,
        timeout: cfg.timeout,
        queue_timeout: cfg.queue_timeout,
        priority: cfg.priority,
        class: cfg.breaker_class.as_deref().and_then(|c| classes.index(c)),
        stats,
    })
}

/// What every connection task shares: the live state and the telemetry.
#[derive(Debug)]
pub struct Shared {
    state: ArcSwap<ProxyState>,
    pub telemetry: Arc<Telemetry>,
}

impl Shared {
    pub fn new(state: ProxyState, telemetry: Arc<Telemetry>) -> Self {
        telemetry.publish(Arc::clone(&state.topology));
        Self {
            state: ArcSwap::from_pointee(state),
            telemetry,
        }
    }

    pub fn state(&self) -> arc_swap::Guard<Arc<ProxyState>> {
        self.state.load()
    }

    /// Publishes a new config version; requests in flight keep the old one.
    pub fn swap(&self, state: ProxyState) {
        self.telemetry.publish(Arc::clone(&state.topology));
        self.state.store(Arc::new(state));
    }
}
