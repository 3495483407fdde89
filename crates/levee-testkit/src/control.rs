//! [`ControlServer`]: a running node's mode, read and switched over HTTP on a
//! port of its own (`levee-node --control ADDR`).
//!
//! ```text
//! GET /mode            200 the mode, in the --mode grammar
//! PUT /mode  (body)    200 the new mode | 400 not a mode | 500 the switch failed
//! ```
//!
//! A port of its own, not a path on the node's port: a proxy forwards every
//! path, so a path there would be reachable by the traffic under test (and
//! switchable by it); and in `refuse` mode the node's port is closed, so
//! only another port can switch it back.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use crate::behavior::Behavior;
use crate::node::AppNode;

/// The longest mode a `PUT /mode` body may hold.
const MAX_MODE_BYTES: usize = 1024;

/// Serves the control interface of one node until dropped or stopped.
#[derive(Debug)]
pub struct ControlServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl ControlServer {
    /// Binds `addr` (port 0 picks a free port) and serves `node`'s mode.
    pub async fn start(addr: SocketAddr, node: Arc<AppNode>) -> std::io::Result<ControlServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(accept_loop(listener, node));
        Ok(ControlServer { addr, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes the listener and its connections, and waits for that (so
    /// their hold on the node is released).
    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accepts until aborted; dropping the set aborts the connections.
async fn accept_loop(listener: TcpListener, node: Arc<AppNode>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let node = Arc::clone(&node);
                    connections.spawn(async move {
                        let service = service_fn(move |req| answer(Arc::clone(&node), req));
                        let served = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                        if let Err(e) = served {
                            tracing::debug!(error = %e, "control connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    tracing::debug!(error = %e, "control accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn answer(
    node: Arc<AppNode>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() != "/mode" {
        return Ok(text(
            StatusCode::NOT_FOUND,
            "the control interface has /mode only\n".into(),
        ));
    }
    match *req.method() {
        Method::GET | Method::HEAD => Ok(text(StatusCode::OK, format!("{}\n", node.behavior()))),
        Method::PUT => {
            let body = match Limited::new(req.into_body(), MAX_MODE_BYTES)
                .collect()
                .await
            {
                Ok(body) => body.to_bytes(),
                Err(e) => return Ok(text(StatusCode::BAD_REQUEST, format!("{e}\n"))),
            };
            let mode = String::from_utf8_lossy(&body);
            let behavior = match mode.trim().parse::<Behavior>() {
                Ok(b) => b,
                Err(e) => return Ok(text(StatusCode::BAD_REQUEST, format!("{e}\n"))),
            };
            let was = node.behavior();
            match node.set_behavior(behavior).await {
                Ok(()) => {
                    let now = node.behavior();
                    tracing::info!(node = %node.name(), %was, %now, "mode switched");
                    Ok(text(StatusCode::OK, format!("{now}\n")))
                }
                Err(e) => Ok(text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot switch: {e}\n"),
                )),
            }
        }
        _ => {
            let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "GET or PUT /mode\n".into());
            resp.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD, PUT"));
            Ok(resp)
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
