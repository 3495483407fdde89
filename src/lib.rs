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
//! levee-control   health checks and drift watches of the live config
//! levee-admin     /healthz /readyz /status /metrics, on its own runtime
//! ```

pub mod demo;
pub mod traffic;

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context as _;
use levee_admin::AdminHandle;
use levee_config::Config;
use levee_proxy::{bind_shared, shutdown_channel, ProxyServer, ProxyState, ServerHandle, Shared};
use levee_telemetry::{Telemetry, Topology};
use tokio::sync::{oneshot, watch};
use tracing::{info, warn};

/// A running proxy: worker threads, a control thread and the admin thread.
pub struct Levee {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub telemetry: Arc<Telemetry>,
    handle: ServerHandle,
    workers: Vec<Worker>,
    control: Control,
    admin: AdminHandle,
}

/// One data-plane worker thread and how to learn it has stopped.
struct Worker {
    thread: JoinHandle<()>,
    /// Connections still open when its grace period ended.
    done: oneshot::Receiver<usize>,
}

/// The thread running health checks and drift watches.
struct Control {
    thread: JoinHandle<()>,
    stop: watch::Sender<bool>,
}

impl Levee {
    /// Binds the listeners and starts serving `config` on `server.workers`
    /// worker threads (0 = one per CPU core).
    pub async fn start(config: Config) -> anyhow::Result<Levee> {
        let config = Arc::new(config);
        let workers = match config.server.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
        // Each worker accepts at most its share of max_connections; a worker
        // with no share would leave its accept queue unserved.
        .min(config.server.max_connections)
        .max(1);
        let telemetry = Telemetry::new(Topology::default(), workers);
        let state = ProxyState::build(Arc::clone(&config), workers);
        let control = spawn_control(&state)?;
        let shared = Arc::new(Shared::new(state, Arc::clone(&telemetry)));
        let (handle, stop) = shutdown_channel();

        // The first worker binds (port 0 picks a port); the others share its address.
        let share = |i: usize| {
            let max = config.server.max_connections;
            max / workers + usize::from(i < max % workers)
        };
        let mut addr = config.server.listen;
        let mut started = Vec::with_capacity(workers);
        for i in 0..workers {
            let (bound_tx, bound_rx) = oneshot::channel();
            let (done_tx, done_rx) = oneshot::channel();
            let shared = Arc::clone(&shared);
            let stop = stop.clone();
            let max_connections = share(i);
            let thread = std::thread::Builder::new()
                .name(format!("levee-worker-{i}"))
                .spawn(move || {
                    run_worker(i, addr, shared, max_connections, stop, bound_tx, done_tx)
                })
                .context("cannot start a data-plane worker thread")?;
            let bound = bound_rx
                .await
                .context("a data-plane worker stopped while starting")?
                .with_context(|| format!("cannot listen on {addr} (server.listen)"))?;
            addr = bound;
            started.push(Worker {
                thread,
                done: done_rx,
            });
        }

        let admin = levee_admin::spawn(
            config.admin.listen,
            Arc::clone(&telemetry),
            config.admin.heartbeat_stale_after,
        )
        .context("admin listener (admin.listen)")?;
        let admin_addr = admin.local_addr();
        telemetry.set_ready(true);
        info!(proxy_addr = %addr, %admin_addr, workers, version = %config.version, "levee is serving");
        Ok(Levee {
            proxy_addr: addr,
            admin_addr,
            telemetry,
            handle,
            workers: started,
            control,
            admin,
        })
    }

    /// Stops accepting, lets in-flight requests finish up to `shutdown_grace`,
    /// and returns how many connections were still open at the end.
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

/// One worker: its runtime, listener, heartbeat and server.
fn run_worker(
    i: usize,
    addr: SocketAddr,
    shared: Arc<Shared>,
    max_connections: usize,
    stop: watch::Receiver<bool>,
    bound: oneshot::Sender<std::io::Result<SocketAddr>>,
    done: oneshot::Sender<usize>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = bound.send(Err(e));
            return;
        }
    };
    rt.block_on(async move {
        let listener = match bind_shared(addr).and_then(|l| l.local_addr().map(|a| (l, a))) {
            Ok((listener, local)) => {
                let _ = bound.send(Ok(local));
                listener
            }
            Err(e) => {
                let _ = bound.send(Err(e));
                return;
            }
        };
        let telemetry = Arc::clone(&shared.telemetry);
        // Tick once now so /healthz is truthful from its first answer.
        telemetry.heartbeat(i).tick();
        let heartbeat = tokio::spawn(async move { telemetry.heartbeat(i).run().await });
        let left = ProxyServer::new(listener, shared, i, max_connections)
            .run(stop)
            .await;
        heartbeat.abort();
        let _ = done.send(left);
    });
}

/// Starts the health checks and drift watches on their own thread, so a
/// busy worker cannot delay them.
fn spawn_control(state: &ProxyState) -> anyhow::Result<Control> {
    let (stop, mut stopped) = watch::channel(false);
    let backends = state.backends.clone();
    let configs = state.config.backends.clone();
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
                let _tasks = levee_proxy::health::spawn_background(&backends, &configs);
                let _ = stopped.wait_for(|s| *s).await;
            });
        })
        .context("cannot start the control thread")?;
    Ok(Control { thread, stop })
}

/// Joins a thread without blocking the caller's runtime.
async fn join(thread: JoinHandle<()>) {
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
}
