//! levee: a reverse proxy that keeps a service answering when the app nodes
//! behind it misbehave.
//!
//! This library assembles the pieces (config, data plane, admin listener,
//! heartbeat) into one running proxy, so the binary, the demo and the
//! end-to-end tests all start levee the same way. The mechanisms live in
//! `crates/`.

pub mod demo;
pub mod traffic;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use levee_admin::AdminHandle;
use levee_config::Config;
use levee_proxy::{shutdown_channel, ProxyServer, ProxyState, ServerHandle, Shared};
use levee_telemetry::{Telemetry, Topology};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::info;

/// A running proxy: data plane on the caller's runtime, admin on its own thread.
pub struct Levee {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub telemetry: Arc<Telemetry>,
    handle: ServerHandle,
    server: JoinHandle<usize>,
    heartbeat: JoinHandle<()>,
    /// Health checks and drift watches of the live config.
    background: Vec<JoinHandle<()>>,
    admin: AdminHandle,
}

impl Levee {
    /// Binds both listeners and starts serving `config`. Call it from inside
    /// the data-plane runtime.
    pub async fn start(config: Config) -> anyhow::Result<Levee> {
        let config = Arc::new(config);
        let telemetry = Telemetry::new(Topology::default());
        let state = ProxyState::build(Arc::clone(&config));
        let background = levee_proxy::health::spawn_background(&state);
        let shared = Arc::new(Shared::new(state, Arc::clone(&telemetry)));

        let listener = TcpListener::bind(config.server.listen)
            .await
            .with_context(|| {
                format!("cannot listen on {} (server.listen)", config.server.listen)
            })?;
        let proxy_addr = listener.local_addr()?;
        let admin = levee_admin::spawn(
            config.admin.listen,
            Arc::clone(&telemetry),
            config.admin.heartbeat_stale_after,
        )
        .context("admin listener (admin.listen)")?;
        let admin_addr = admin.local_addr();

        // Tick once now so /healthz is truthful from its first answer.
        telemetry.heartbeat.tick();
        let heartbeat = {
            let telemetry = Arc::clone(&telemetry);
            tokio::spawn(async move { telemetry.heartbeat.run().await })
        };
        let (handle, stop) = shutdown_channel();
        let server = tokio::spawn(ProxyServer::new(listener, shared).run(stop));
        info!(%proxy_addr, %admin_addr, version = %config.version, "levee is serving");
        Ok(Levee {
            proxy_addr,
            admin_addr,
            telemetry,
            handle,
            server,
            heartbeat,
            background,
            admin,
        })
    }

    /// Stops accepting, lets in-flight requests finish up to `shutdown_grace`,
    /// and returns how many connections were still open at the end.
    pub async fn shutdown(self) -> usize {
        self.handle.shutdown();
        let left = self.server.await.unwrap_or(0);
        self.heartbeat.abort();
        for task in &self.background {
            task.abort();
        }
        // Joining the admin thread blocks; do it off the async workers.
        let admin = self.admin;
        let _ = tokio::task::spawn_blocking(move || admin.stop()).await;
        left
    }
}
