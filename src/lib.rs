//! levee: a reverse proxy that keeps a service answering when the app nodes
//! behind it misbehave.
//!
//! This library assembles the pieces (config, data plane, admin listener,
//! heartbeats, background checks) into one running proxy, so the binary, the
//! demo and the end-to-end tests all start levee the same way. The
//! mechanisms live in `crates/`.
//!
//! Threads of a running levee:
//! ```text
//! levee-worker-N  one per worker: a current-thread runtime, its own SO_REUSEPORT
//!                 listener and node pools, and a heartbeat; requests stay on one core
//! levee-control   health checks, backend watches and DNS refreshes of the live config
//!                 (a backend's are restarted when a new state changes that backend)
//! levee-admin     /healthz /readyz /status /metrics, on its own runtime
//! ```

#[cfg(feature = "demo")]
pub mod demo;
pub mod logging;
pub mod traffic;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context as _;
use levee_admin::AdminHandle;
use levee_config::{BackendConfig, Config};
use levee_proxy::access_log::AccessLog;
use levee_proxy::dns::{self, Resolve, SystemResolver};
use levee_proxy::upstream::Backend;
use levee_proxy::{bind_workers, shutdown_channel, ProxyServer, ProxyState, ServerHandle, Shared};
use levee_telemetry::{Telemetry, Topology};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

/// A running proxy: worker threads, a control thread and the admin thread.
pub struct Levee {
    pub proxy_addr: SocketAddr,
    /// The `[server.tls]` listener's address, if there is one.
    pub tls_addr: Option<SocketAddr>,
    pub admin_addr: SocketAddr,
    pub telemetry: Arc<Telemetry>,
    shared: Arc<Shared>,
    handle: ServerHandle,
    workers: Vec<Worker>,
    control: Control,
    admin: AdminHandle,
    /// Turns node names into addresses, at every load and refresh.
    resolver: Arc<dyn Resolve>,
    /// levee's own log filter, when levee installed the subscriber.
    log_level: Option<logging::LogLevel>,
}

/// One data-plane worker thread and how to learn it has stopped.
struct Worker {
    thread: JoinHandle<()>,
    /// Connections still open when its grace period ended.
    done: oneshot::Receiver<usize>,
    /// Hands the worker a listener on a new address (a reload).
    rebind: mpsc::UnboundedSender<std::net::TcpListener>,
}

/// The thread running health checks, backend watches and DNS refreshes.
struct Control {
    thread: JoinHandle<()>,
    stop: watch::Sender<bool>,
}

/// What a successful reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// The new config's hash.
    pub hash: String,
    /// Whether the proxy's listen address moved.
    pub rebound: bool,
    /// Changed keys that take effect only after a restart.
    pub restart_required: Vec<String>,
}

impl Levee {
    /// Binds the listeners and starts serving `config` on `server.workers`
    /// worker threads (0 = one per CPU core), with node names resolved by
    /// the system's resolver.
    pub async fn start(config: Config) -> anyhow::Result<Levee> {
        Self::start_with(config, Arc::new(SystemResolver)).await
    }

    /// [`Levee::start`] with node names resolved by `resolver`. A name that
    /// does not resolve yet is logged and counted, and gets its addresses
    /// at a later refresh.
    pub async fn start_with(config: Config, resolver: Arc<dyn Resolve>) -> anyhow::Result<Levee> {
        let config = Arc::new(config);
        let workers = match config.server.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
        // Each worker accepts at most its share of max_connections; a worker
        // with no share would leave its accept queue unserved.
        .min(config.server.max_connections)
        .max(1);
        let listeners = bind_workers(config.server.listen, workers).with_context(|| {
            format!("cannot listen on {} (server.listen)", config.server.listen)
        })?;
        let proxy_addr = listeners
            .first()
            .map(std::net::TcpListener::local_addr)
            .transpose()?
            .unwrap_or(config.server.listen);
        let mut tls_listeners = match &config.server.tls {
            Some(tls) => bind_workers(tls.listen, workers)
                .with_context(|| format!("cannot listen on {} (server.tls.listen)", tls.listen))?,
            None => Vec::new(),
        };
        let tls_addr = tls_listeners
            .first()
            .map(std::net::TcpListener::local_addr)
            .transpose()?;
        let telemetry = Telemetry::new(Topology::default(), workers);
        telemetry.config_loaded(&config.version, &config.origin, Vec::new());
        let answers = dns::resolve(dns::names(&config), &*resolver).await;
        let resolved = dns::Resolved::default().updated(&answers, &config);
        let mut state =
            ProxyState::build_resolved(Arc::clone(&config), workers, None, Arc::new(resolved));
        state.access_log = AccessLog::open(
            &config.log.access,
            Arc::clone(&state.topology.access_log_dropped),
        )
        .with_context(|| {
            format!(
                "cannot open the access log (log.access = {:?})",
                config.log.access
            )
        })?;
        let state = Arc::new(state);
        dns::record(&state, &answers, None);
        let shared = Arc::new(Shared::new(state, Arc::clone(&telemetry)));
        let control = spawn_control(Arc::clone(&shared), Arc::clone(&resolver))?;
        let (handle, stop) = shutdown_channel();

        let share = |i: usize| {
            let max = config.server.max_connections;
            max / workers + usize::from(i < max % workers)
        };
        // The admin listener answers before the proxy does, so a probe that
        // finds the proxy port open also finds /healthz (and /readyz says
        // "not ready" until every worker runs). A worker failing to start
        // drops it, which stops it.
        let admin = spawn_admin(&config, &telemetry)?;
        let admin_addr = admin.local_addr();
        let mut started = Vec::with_capacity(workers);
        for (i, listener) in listeners.into_iter().enumerate() {
            let (ready_tx, ready_rx) = oneshot::channel();
            let (done_tx, done_rx) = oneshot::channel();
            let (rebind, rebind_rx) = mpsc::unbounded_channel();
            let server = WorkerStart {
                index: i,
                listener,
                tls_listener: (i < tls_listeners.len()).then(|| tls_listeners.remove(0)),
                shared: Arc::clone(&shared),
                max_connections: share(i),
                rebind: rebind_rx,
            };
            let stop = stop.clone();
            let thread = std::thread::Builder::new()
                .name(format!("levee-worker-{i}"))
                .spawn(move || run_worker(server, stop, ready_tx, done_tx))
                .context("cannot start a data-plane worker thread")?;
            ready_rx
                .await
                .context("a data-plane worker stopped while starting")?
                .context("a data-plane worker could not start")?;
            started.push(Worker {
                thread,
                done: done_rx,
                rebind,
            });
        }

        telemetry.set_ready(true);
        info!(%proxy_addr, tls_addr = tls_addr.map(tracing::field::display), %admin_addr, workers, version = %config.version, "levee is serving");
        Ok(Levee {
            proxy_addr,
            tls_addr,
            admin_addr,
            telemetry,
            shared,
            handle,
            workers: started,
            control,
            admin,
            resolver,
            log_level: None,
        })
    }

    /// Lets reloads change the level of the log [`logging::init`] set up.
    pub fn control_log_level(&mut self, level: logging::LogLevel) {
        self.log_level = Some(level);
    }

    /// Reads, validates and applies the config file at `path`; a failure
    /// changes nothing, and is logged, counted and shown on `/status`.
    pub async fn reload_file(&mut self, path: &Path) -> anyhow::Result<ReloadReport> {
        match levee_config::load(path) {
            Ok(config) => self.reload(config).await,
            Err(e) => Err(self.refused(e.to_string())),
        }
    }

    /// Applies a validated config without dropping a request: everything
    /// that can fail (binding a new listen address) happens first; then the
    /// new state, built with what carries over from the live one, is
    /// swapped in. Requests in flight finish on the state they started with.
    pub async fn reload(&mut self, config: Config) -> anyhow::Result<ReloadReport> {
        let old = self.shared.current();
        let workers = self.workers.len();
        let was = &old.config;
        let mut restart_required = Vec::new();
        let mut config = config;
        if config.server.workers != was.server.workers {
            restart_required.push("server.workers".to_owned());
            config.server.workers = was.server.workers;
        }
        if config.server.max_connections != was.server.max_connections {
            restart_required.push("server.max_connections".to_owned());
            config.server.max_connections = was.server.max_connections;
        }
        // The TLS listener is bound at start; its certificates reload.
        let tls_listen = |c: &Config| c.server.tls.as_ref().map(|t| t.listen);
        if tls_listen(&config) != tls_listen(was) {
            restart_required.push("server.tls.listen".to_owned());
            if config.server.tls.is_none() {
                config.server.tls = was.server.tls.clone();
            }
        }
        // The log's writer is installed once, at start; its filter reloads.
        if config.log.format != was.log.format {
            restart_required.push("log.format".to_owned());
            config.log.format = was.log.format;
        }
        let listeners = if config.server.listen != was.server.listen {
            match bind_workers(config.server.listen, workers) {
                Ok(l) => Some(l),
                Err(e) => {
                    return Err(self.refused(format!(
                        "{}: server.listen: cannot listen on {}: {e}",
                        config.origin, config.server.listen
                    )))
                }
            }
        } else {
            None
        };
        let admin = if config.admin.listen != was.admin.listen {
            match spawn_admin(&config, &self.telemetry) {
                Ok(a) => Some(a),
                Err(e) => return Err(self.refused(format!("{}: {e:#}", config.origin))),
            }
        } else {
            None
        };

        // A new access log target is opened before anything changes; the
        // same target keeps its writer (and its open file).
        let access_log = if config.log.access == was.log.access {
            None
        } else {
            match AccessLog::open(
                &config.log.access,
                Arc::clone(&old.topology.access_log_dropped),
            ) {
                Ok(log) => Some(log),
                Err(e) => {
                    return Err(self.refused(format!(
                        "{}: log.access: cannot open {:?}: {e}",
                        config.origin, config.log.access
                    )))
                }
            }
        };

        let config = Arc::new(config);
        // Names are resolved afresh; one that fails keeps what the live
        // state knew for it. The state is built from the live one at swap
        // time, so a DNS refresh in between is not lost.
        let answers = dns::resolve(dns::names(&config), &*self.resolver).await;
        self.shared
            .rebuild(|live| {
                let resolved = live.resolved.updated(&answers, &config);
                let mut next = ProxyState::build_resolved(
                    Arc::clone(&config),
                    workers,
                    Some(live),
                    Arc::new(resolved),
                );
                if let Some(log) = &access_log {
                    next.access_log.clone_from(log);
                }
                Some(next)
            })
            .await;
        dns::record(&self.shared.current(), &answers, None);
        let rebound = listeners.is_some();
        if let Some(listeners) = listeners {
            if let Some(addr) = listeners.first().and_then(|l| l.local_addr().ok()) {
                self.proxy_addr = addr;
            }
            for (w, l) in self.workers.iter().zip(listeners) {
                let _ = w.rebind.send(l);
            }
        }
        if let Some(admin) = admin {
            self.admin_addr = admin.local_addr();
            let old_admin = std::mem::replace(&mut self.admin, admin);
            let _ = tokio::task::spawn_blocking(move || old_admin.stop()).await;
        } else {
            self.admin
                .set_heartbeat_stale_after(config.admin.heartbeat_stale_after);
        }
        if let Some(level) = self.log_level.as_ref() {
            if config.log.level != was.log.level {
                level.set(&config.log.level);
            }
        }
        self.telemetry
            .config_loaded(&config.version, &config.origin, restart_required.clone());
        self.telemetry.reload_done(Ok(()));
        if !restart_required.is_empty() {
            warn!(keys = ?restart_required, "these changes take effect only after a restart");
        }
        info!(version = %config.version, file = %config.origin, rebound, "config reloaded");
        Ok(ReloadReport {
            hash: config.version.clone(),
            rebound,
            restart_required,
        })
    }

    /// Records a refused reload; the live config stays.
    fn refused(&self, error: String) -> anyhow::Error {
        warn!(error = %error, "config reload refused; the last good config stays live");
        self.telemetry.reload_done(Err(error.clone()));
        anyhow::anyhow!(error)
    }

    /// Stops accepting, lets in-flight requests finish up to `shutdown_grace`,
    /// and returns how many connections were still open at the end.
    /// Reopens the access log file at its path (after log rotation renamed
    /// it); lines already queued go to the old file first.
    pub fn reopen_access_log(&self) {
        if let Some(log) = &self.shared.state().access_log {
            info!(target = ?log.target(), "reopening the access log");
            log.reopen();
        }
    }

    pub async fn shutdown(self) -> usize {
        self.telemetry.set_draining();
        self.handle.shutdown();
        let mut left = 0;
        for w in self.workers {
            left += w.done.await.unwrap_or(0);
            join(w.thread).await;
        }
        self.control.stop.send_replace(true);
        join(self.control.thread).await;
        let admin = self.admin;
        let _ = tokio::task::spawn_blocking(move || admin.stop()).await;
        left
    }
}

/// What a worker thread starts with.
struct WorkerStart {
    index: usize,
    listener: std::net::TcpListener,
    tls_listener: Option<std::net::TcpListener>,
    shared: Arc<Shared>,
    max_connections: usize,
    rebind: mpsc::UnboundedReceiver<std::net::TcpListener>,
}

/// One worker: its runtime, heartbeat and server.
fn run_worker(
    start: WorkerStart,
    stop: watch::Receiver<bool>,
    ready: oneshot::Sender<std::io::Result<()>>,
    done: oneshot::Sender<usize>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let i = start.index;
    rt.block_on(async move {
        let telemetry = Arc::clone(&start.shared.telemetry);
        let server = ProxyServer::new(
            start.listener,
            start.shared,
            i,
            start.max_connections,
            start.rebind,
        )
        .and_then(|s| match start.tls_listener {
            Some(l) => s.with_tls_listener(l),
            None => Ok(s),
        });
        let server = match server {
            Ok(server) => server,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        // Tick before saying ready, so /healthz is truthful from its first answer.
        telemetry.heartbeat(i).tick();
        let _ = ready.send(Ok(()));
        let heartbeat = tokio::spawn(async move { telemetry.heartbeat(i).run().await });
        let left = server.run(stop).await;
        heartbeat.abort();
        let _ = done.send(left);
    });
}

fn spawn_admin(config: &Config, telemetry: &Arc<Telemetry>) -> anyhow::Result<AdminHandle> {
    levee_admin::spawn(
        config.admin.listen,
        Arc::clone(telemetry),
        config.admin.heartbeat_stale_after,
    )
    .context("admin listener (admin.listen)")
}

/// Runs the health checks, backend watches and DNS refreshes of the live
/// state on their own thread, so a busy worker cannot delay them. Each new
/// state (a reload, changed addresses) restarts those of the backends it
/// changed.
fn spawn_control(shared: Arc<Shared>, resolver: Arc<dyn Resolve>) -> anyhow::Result<Control> {
    let (stop, mut stopped) = watch::channel(false);
    let mut states = shared.subscribe();
    let thread = std::thread::Builder::new()
        .name("levee-control".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    warn!(error = %e, "control runtime failed to start: no health checks");
                    return;
                }
            };
            rt.block_on(async move {
                let mut running: Vec<BackendTasks> = Vec::new();
                loop {
                    states.borrow_and_update();
                    let state = shared.current();
                    let mut next = Vec::with_capacity(state.backends.len());
                    for (backend, cfg) in state.backends.iter().zip(&state.config.backends) {
                        let key = BackendTasks::key(&state, backend, cfg);
                        match running.iter().position(|t| t.key == key) {
                            Some(i) => next.push(running.swap_remove(i)),
                            None => next
                                .push(BackendTasks::start(key, &shared, backend, cfg, &resolver)),
                        }
                    }
                    for gone in std::mem::replace(&mut running, next) {
                        gone.stop();
                    }
                    drop(state);
                    let stopping = tokio::select! {
                        _ = stopped.wait_for(|s| *s) => true,
                        changed = states.changed() => changed.is_err(),
                    };
                    if stopping {
                        for t in running {
                            t.stop();
                        }
                        return;
                    }
                }
            });
        })
        .context("cannot start the control thread")?;
    Ok(Control { thread, stop })
}

/// The background tasks of one backend (health checks, watch, DNS refresh)
/// and what they were started for. A new state whose backend has the same
/// config, nodes and traffic classes keeps them running: the node state
/// they drive carries over unchanged, and an address change of one backend
/// (several a minute, while an app rolls) does not restart every health
/// check.
struct BackendTasks {
    key: (BackendConfig, Vec<String>, Vec<String>),
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl BackendTasks {
    fn key(
        state: &ProxyState,
        backend: &Backend,
        cfg: &BackendConfig,
    ) -> (BackendConfig, Vec<String>, Vec<String>) {
        let nodes = backend
            .nodes
            .nodes()
            .iter()
            .map(|n| n.stats.addr.clone())
            .collect();
        (cfg.clone(), nodes, state.classes.names().to_vec())
    }

    fn start(
        key: (BackendConfig, Vec<String>, Vec<String>),
        shared: &Arc<Shared>,
        backend: &Arc<Backend>,
        cfg: &BackendConfig,
        resolver: &Arc<dyn Resolve>,
    ) -> Self {
        let mut tasks = levee_proxy::health::spawn_background(
            std::slice::from_ref(backend),
            std::slice::from_ref(cfg),
        );
        tasks.extend(dns::spawn_refresh(shared, cfg, resolver));
        Self { key, tasks }
    }

    fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Joins a thread without blocking the caller's runtime.
async fn join(thread: JoinHandle<()>) {
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
}
