//! What grows with the configuration: route matching at 10 and 10,000
//! routes, node selection at 3 and 1,000 nodes, and a whole request through
//! the stack (an in-memory client and node, no sockets; levee's own HTTP/1
//! server in front) with one route and two nodes against 10,000 routes and
//! 1,000 nodes. Each pair should cost the same. And what a start or a
//! reload costs: parsing, checking and building a config of 10 and 10,000
//! routes.

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{Method, Request, Response};
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use levee_proxy::activity::ConnActivity;
use levee_proxy::error::ProxyError;
use levee_proxy::h1::server;
use levee_proxy::headers::Scheme;
use levee_proxy::pool::NodeBody;
use levee_proxy::stack::node::{NodeRequest, NotReplied, Replied};
use levee_proxy::{ProxyState, Shared};
use levee_telemetry::{ErrorReason, Telemetry, Topology};

/// A config of `routes` routes and one backend of `nodes` nodes. Every
/// route but the last has a prefix the benched requests never take (a third
/// of them tied to a host, a third to methods), so a request for
/// `/products/42` reaches only the last, catch-all route.
fn config(routes: usize, nodes: usize) -> Arc<ProxyState> {
    build(&config_text(routes, nodes))
}

/// The TOML of [`config`].
fn config_text(routes: usize, nodes: usize) -> String {
    let mut toml =
        String::from("[server]\nlisten = \"127.0.0.1:0\"\n[[backend]]\nname = \"app\"\n");
    toml += "max_in_flight = 4096\nnodes = [";
    for i in 0..nodes {
        toml += &format!("\"127.0.0.1:{}\",", 20_000 + i);
    }
    toml += "]\n";
    for i in 0..routes.saturating_sub(1) {
        toml += &format!("[[route]]\npath_prefix = \"/service-{i}/\"\nbackend = \"app\"\n");
        match i % 3 {
            0 => toml += &format!("host = \"svc{i}.example.com\"\n"),
            1 => toml += "methods = [\"POST\", \"PUT\"]\n",
            _ => {}
        }
    }
    toml += "[[route]]\npath_prefix = \"/\"\nbackend = \"app\"\n";
    toml
}

/// What a start or a reload does with a config's text: parse and check it
/// (as `levee check`), then build the state the data plane reads.
fn build(toml: &str) -> Arc<ProxyState> {
    let config = match levee_config::parse(toml, "bench.toml") {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    Arc::new(ProxyState::build(Arc::new(config), 1, None))
}

fn loading(c: &mut Criterion) {
    let mut group = c.benchmark_group("config parse, check and build, N routes");
    group.sample_size(10);
    for routes in [10, 10_000] {
        let text = config_text(routes, 3);
        group.bench_with_input(BenchmarkId::from_parameter(routes), &text, |b, text| {
            b.iter(|| build(black_box(text)));
        });
    }
    group.finish();
}

fn routing(c: &mut Criterion) {
    let mut group = c.benchmark_group("route match, the last of N wins");
    for routes in [10, 10_000] {
        let state = config(routes, 1);
        group.bench_with_input(BenchmarkId::from_parameter(routes), &state, |b, state| {
            b.iter(|| {
                state.route_index(
                    black_box(Some("www.example.com:443")),
                    &Method::GET,
                    black_box("/products/42"),
                )
            })
        });
    }
    group.finish();
}

fn selection(c: &mut Criterion) {
    let mut group = c.benchmark_group("node pick, p2c_ewma over N nodes");
    for nodes in [3, 1_000] {
        let state = config(1, nodes);
        let set = &state.backends[0].nodes;
        group.bench_with_input(BenchmarkId::from_parameter(nodes), set, |b, set| {
            b.iter(|| set.pick(black_box(0), &[], true, false))
        });
    }
    group.finish();
}

/// A node in memory: an HTTP/2 connection over a duplex pipe to a hyper
/// server that answers every request `200 ok`.
#[derive(Clone)]
struct MemoryNode {
    sender: hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
}

impl MemoryNode {
    async fn start() -> Self {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let service = service_fn(|_req: Request<Incoming>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(server_io), service)
                .await;
        });
        let (sender, conn) = match hyper::client::conn::http2::handshake(
            TokioExecutor::new(),
            TokioIo::new(client_io),
        )
        .await
        {
            Ok(pair) => pair,
            Err(e) => panic!("in-memory node: {e}"),
        };
        tokio::spawn(conn);
        Self { sender }
    }
}

impl tower::Service<NodeRequest> for MemoryNode {
    type Response = Replied;
    type Error = NotReplied;
    type Future = Pin<Box<dyn Future<Output = Result<Replied, NotReplied>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), NotReplied>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: NodeRequest) -> Self::Future {
        let head_back = req.head_back;
        let (parts, _body) = req.request.into_parts();
        let mut sender = self.sender.clone();
        Box::pin(async move {
            let mut out = Request::new(Empty::new());
            *out.method_mut() = parts.method.clone();
            *out.uri_mut() = parts.uri.clone();
            // It gives the request head back when asked, as levee's HTTP/1
            // client does.
            sender
                .send_request(out)
                .await
                .map(|resp| Replied {
                    response: resp.map(NodeBody::from),
                    head: head_back.then(|| Box::new(parts)),
                })
                .map_err(|e| {
                    NotReplied::from(ProxyError::new(ErrorReason::UpstreamReset, e.to_string()))
                })
        })
    }
}

fn whole_request(c: &mut Criterion) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("runtime: {e}"),
    };
    let mut group = c.benchmark_group("whole request through the stack");
    for (routes, nodes) in [(1, 2), (10_000, 1_000)] {
        let state = config(routes, nodes);
        let shared = Arc::new(Shared::new(state, Telemetry::new(Topology::default(), 1)));
        let mut client = rt.block_on(async {
            let node = MemoryNode::start().await;
            let peer = "127.0.0.1:40000".parse().unwrap_or_else(|e| panic!("{e}"));
            let mut stack =
                levee_proxy::stack::stack_over(Arc::clone(&shared), peer, Scheme::Http, node);
            let (client_io, server_io) = tokio::io::duplex(64 * 1024);
            // levee's own HTTP/1 server, as a client connection is served;
            // a connection that parks between iterations is served again.
            tokio::spawn(async move {
                let activity = ConnActivity::new();
                let closing = std::future::pending::<()>();
                tokio::pin!(closing);
                let mut draining = false;
                let mut io = server_io;
                let mut resumed = false;
                loop {
                    let env = server::Env {
                        shared: &shared,
                        activity: &activity,
                        peer,
                    };
                    let ended = server::serve(
                        io,
                        BytesMut::new(),
                        &mut stack,
                        closing.as_mut(),
                        &mut draining,
                        resumed,
                        env,
                    )
                    .await;
                    match ended {
                        server::Ended::Parked(back) => io = back,
                        _ => return,
                    }
                    resumed = true;
                }
            });
            let (sender, conn) =
                match hyper::client::conn::http1::handshake(TokioIo::new(client_io)).await {
                    Ok(pair) => pair,
                    Err(e) => panic!("in-memory client: {e}"),
                };
            tokio::spawn(conn);
            sender
        });
        let id = format!("{routes} routes, {nodes} nodes");
        group.bench_function(BenchmarkId::from_parameter(id), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let req = Request::get("/products/42")
                        .header("host", "www.example.com")
                        .body(Empty::<Bytes>::new())
                        .unwrap_or_else(|e| panic!("{e}"));
                    let resp = match client.send_request(req).await {
                        Ok(resp) => resp,
                        Err(e) => panic!("request: {e}"),
                    };
                    assert_eq!(resp.status(), 200);
                    let body = resp.into_body().collect().await;
                    black_box(body.map(|b| b.to_bytes()).is_ok())
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, routing, selection, whole_request, loading);
criterion_main!(benches);
