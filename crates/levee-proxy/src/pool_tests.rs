//! The pool against real nodes on loopback: reuse, what a node's own
//! closing does, the idle bounds, HTTP/2 sharing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Notify};

use super::{NodePool, PoolConfig, PoolError};
use crate::body::RequestBody;
use crate::node_io::NodeConnector;

const WAIT: Duration = Duration::from_secs(10);

/// What a test node counted.
#[derive(Debug, Default)]
struct Counts {
    connections: AtomicUsize,
    requests: AtomicUsize,
}

impl Counts {
    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// A hyper node answering "ok", or on `/stream` a body fed by the sender
/// that [`node`] returns.
async fn node(http2: bool) -> (SocketAddr, Arc<Counts>, mpsc::Sender<Bytes>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = Arc::new(Counts::default());
    let (feed, stream) = mpsc::channel::<Bytes>(4);
    let stream = Arc::new(Mutex::new(Some(stream)));
    let c = Arc::clone(&counts);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            c.connections.fetch_add(1, Ordering::SeqCst);
            let (c, stream) = (Arc::clone(&c), Arc::clone(&stream));
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                c.requests.fetch_add(1, Ordering::SeqCst);
                let fed = (req.uri().path() == "/stream")
                    .then(|| stream.lock().unwrap().take())
                    .flatten();
                async move {
                    let body: BoxBody<Bytes, Infallible> = match fed {
                        Some(rx) => {
                            let frames = futures_util::stream::unfold(rx, |mut rx| async move {
                                let data = rx.recv().await?;
                                Some((Ok(Frame::data(data)), rx))
                            });
                            StreamBody::new(frames).boxed()
                        }
                        None => Full::new(Bytes::from_static(b"ok")).boxed(),
                    };
                    Ok::<_, Infallible>(Response::new(body))
                }
            });
            tokio::spawn(async move {
                let io = TokioIo::new(socket);
                if http2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, service)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                }
            });
        }
    });
    (addr, counts, feed)
}

/// A node that answers the `n`th request head it reads (over all its
/// connections) with `script[n]`, or closes that connection when it is
/// `None`; with `close_idle`, it closes a connection idle that long.
async fn raw_node(
    script: Vec<Option<&'static [u8]>>,
    close_idle: Option<Duration>,
) -> (SocketAddr, Arc<Counts>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = Arc::new(Counts::default());
    let c = Arc::clone(&counts);
    let script = Arc::new(script);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            c.connections.fetch_add(1, Ordering::SeqCst);
            let (c, script) = (Arc::clone(&c), Arc::clone(&script));
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                loop {
                    let mut seen = Vec::new();
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        let read = socket.read(&mut buf);
                        let n = match close_idle.filter(|_| seen.is_empty()) {
                            Some(idle) => match tokio::time::timeout(idle, read).await {
                                Ok(r) => r,
                                Err(_) => return,
                            },
                            None => read.await,
                        };
                        match n {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    let i = c.requests.fetch_add(1, Ordering::SeqCst);
                    match script.get(i).copied().flatten() {
                        Some(answer) => socket.write_all(answer).await.unwrap(),
                        None => return,
                    }
                }
            });
        }
    });
    (addr, counts)
}

/// An HTTP/2 node that answers one request per connection, then sends
/// GOAWAY and closes that connection once the answer is out; the watch
/// counts the connections it has closed.
async fn goaway_node() -> (SocketAddr, Arc<Counts>, watch::Receiver<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = Arc::new(Counts::default());
    let (closed_tx, closed) = watch::channel(0);
    let c = Arc::clone(&counts);
    tokio::spawn(async move {
        let closed_tx = Arc::new(closed_tx);
        while let Ok((socket, _)) = listener.accept().await {
            c.connections.fetch_add(1, Ordering::SeqCst);
            let answered = Arc::new(Notify::new());
            let service = hyper::service::service_fn({
                let (c, answered) = (Arc::clone(&c), Arc::clone(&answered));
                move |_req: Request<Incoming>| {
                    c.requests.fetch_add(1, Ordering::SeqCst);
                    answered.notify_one();
                    async {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                }
            });
            let closed_tx = Arc::clone(&closed_tx);
            tokio::spawn(async move {
                let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(socket), service);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    () = answered.notified() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
                closed_tx.send_modify(|n| *n += 1);
            });
        }
    });
    (addr, counts, closed)
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

fn pool(addr: SocketAddr, max_idle: usize, http2: bool) -> NodePool {
    let connector = NodeConnector::new(addr, None, Duration::from_secs(2), None);
    NodePool::new(
        connector,
        PoolConfig {
            idle_timeout: Duration::from_secs(30),
            max_idle,
            http2,
        },
    )
}

/// A GET aimed as the pool takes it: origin form for HTTP/1, absolute for
/// HTTP/2.
fn get(pool: &NodePool, addr: SocketAddr, path: &str) -> Request<RequestBody> {
    let target = if pool.inner.config.http2 {
        format!("http://{addr}{path}")
    } else {
        path.to_owned()
    };
    Request::get(target)
        .header("host", "test")
        .body(RequestBody::kept(Bytes::new()))
        .unwrap()
}

/// Sends a GET and reads the whole answer.
async fn fetch(pool: &NodePool, addr: SocketAddr, path: &str) -> Result<Bytes, PoolError> {
    let resp = tokio::time::timeout(WAIT, pool.send(get(pool, addr, path), None, false))
        .await
        .unwrap()?;
    assert_eq!(resp.status(), 200);
    Ok(resp.into_body().collect().await.unwrap().to_bytes())
}

#[tokio::test]
async fn sequential_requests_share_one_connection() {
    let (addr, counts, _) = node(false).await;
    let pool = pool(addr, 4, false);
    for _ in 0..5 {
        assert_eq!(fetch(&pool, addr, "/").await.unwrap(), "ok");
    }
    assert_eq!(counts.requests(), 5);
    assert_eq!(counts.connections(), 1);
    assert_eq!(pool.idle(), 1);
}

#[tokio::test]
async fn a_connection_is_reused_only_once_its_body_has_ended() {
    let (addr, counts, feed) = node(false).await;
    let pool = pool(addr, 4, false);
    let streaming = pool
        .send(get(&pool, addr, "/stream"), None, false)
        .await
        .unwrap();
    feed.send(Bytes::from_static(b"part")).await.unwrap();
    // The first connection is still carrying its body: a second one opens.
    assert_eq!(fetch(&pool, addr, "/").await.unwrap(), "ok");
    assert_eq!(counts.connections(), 2);
    drop(feed);
    let body = streaming.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "part");
    // Both are back; the next requests take them and open none.
    assert_eq!(fetch(&pool, addr, "/").await.unwrap(), "ok");
    assert_eq!(fetch(&pool, addr, "/").await.unwrap(), "ok");
    assert_eq!(counts.connections(), 2);
    assert_eq!(counts.requests(), 4);
}

#[tokio::test]
async fn max_idle_bounds_the_connections_kept() {
    let (addr, counts, feed) = node(false).await;
    let pool = pool(addr, 1, false);
    let streaming = pool
        .send(get(&pool, addr, "/stream"), None, false)
        .await
        .unwrap();
    assert_eq!(fetch(&pool, addr, "/").await.unwrap(), "ok");
    drop(feed);
    streaming.into_body().collect().await.unwrap();
    assert_eq!(counts.connections(), 2);
    // One of the two is kept: the next request reuses it...
    assert_eq!(fetch(&pool, addr, "/").await.unwrap(), "ok");
    assert_eq!(counts.connections(), 2);
    assert_eq!(pool.idle(), 1);
}

#[tokio::test]
async fn max_idle_zero_opens_a_connection_per_request() {
    let (addr, counts, _) = node(false).await;
    let pool = pool(addr, 0, false);
    for _ in 0..3 {
        assert_eq!(fetch(&pool, addr, "/").await.unwrap(), "ok");
    }
    assert_eq!(counts.connections(), 3);
    assert_eq!(pool.idle(), 0);
}

#[tokio::test(start_paused = true)]
async fn idle_connections_close_after_the_idle_timeout() {
    let (addr, counts, _) = node(false).await;
    let pool = pool(addr, 4, false);
    assert_eq!(fetch(&pool, addr, "/").await.unwrap(), "ok");
    assert_eq!(pool.idle(), 1);
    tokio::time::sleep(Duration::from_secs(29)).await;
    assert_eq!(pool.idle(), 1, "still within the idle timeout");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(pool.idle(), 0, "closed by the reaper");
    assert_eq!(fetch(&pool, addr, "/").await.unwrap(), "ok");
    assert_eq!(counts.connections(), 2);
}

/// Each idle connection expires on its own clock: the one back first
/// (below the most recent in the stack) goes first, the other stays.
#[tokio::test(start_paused = true)]
async fn idle_connections_expire_oldest_first() {
    let (addr, counts, feed) = node(false).await;
    let pool = pool(addr, 4, false);
    let streaming = pool
        .send(get(&pool, addr, "/stream"), None, false)
        .await
        .unwrap();
    assert_eq!(fetch(&pool, addr, "/").await.unwrap(), "ok");
    assert_eq!(pool.idle(), 1);
    tokio::time::sleep(Duration::from_secs(10)).await;
    drop(feed);
    streaming.into_body().collect().await.unwrap();
    assert_eq!(pool.idle(), 2);
    tokio::time::sleep(Duration::from_secs(21)).await;
    assert_eq!(pool.idle(), 1, "the first one back expired");
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(pool.idle(), 0, "then the other");
    assert_eq!(counts.connections(), 2);
}

#[tokio::test]
async fn a_node_that_closes_idle_connections_costs_no_request() {
    let (addr, counts) = raw_node(vec![Some(OK), Some(OK)], Some(Duration::from_millis(50))).await;
    let pool = pool(addr, 4, false);
    assert_eq!(fetch(&pool, addr, "/").await.unwrap(), "ok");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fetch(&pool, addr, "/").await.unwrap(), "ok");
    assert_eq!(counts.connections(), 2);
    assert_eq!(counts.requests(), 2, "each request reached the node once");
}

#[tokio::test]
async fn a_request_that_reached_the_node_is_not_sent_again() {
    // The node reads the second request, then closes without an answer.
    let (addr, counts) = raw_node(vec![Some(OK), None], None).await;
    let pool = pool(addr, 4, false);
    assert_eq!(fetch(&pool, addr, "/").await.unwrap(), "ok");
    let err = fetch(&pool, addr, "/").await.unwrap_err();
    assert!(matches!(err, PoolError::Send(_)), "{err:?}");
    assert_eq!(counts.requests(), 2);
    assert_eq!(counts.connections(), 1, "no second connection for it");
}

#[tokio::test]
async fn a_response_framed_two_ways_closes_its_connection() {
    let both: &[u8] =
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
    let (addr, counts) = raw_node(vec![Some(both), Some(OK)], None).await;
    let pool = pool(addr, 4, false);
    let err = tokio::time::timeout(WAIT, pool.send(get(&pool, addr, "/"), None, false))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, PoolError::Framing), "{err:?}");
    assert_eq!(pool.idle(), 0);
    assert_eq!(fetch(&pool, addr, "/").await.unwrap(), "ok");
    assert_eq!(counts.connections(), 2);
}

#[tokio::test]
async fn http2_requests_share_one_connection() {
    let (addr, counts, _) = node(true).await;
    let pool = pool(addr, 4, true);
    // Together before any connection exists: they wait for the same one.
    let calls = (0..8).map(|_| fetch(&pool, addr, "/"));
    for got in futures_util::future::join_all(calls).await {
        assert_eq!(got.unwrap(), "ok");
    }
    assert_eq!(fetch(&pool, addr, "/").await.unwrap(), "ok");
    assert_eq!(counts.requests(), 9);
    assert_eq!(counts.connections(), 1);
}

#[tokio::test]
async fn requests_waiting_for_a_failed_http2_connect_share_its_error() {
    // Nothing listens there.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let pool = pool(addr, 4, true);
    let calls = (0..4).map(|_| fetch(&pool, addr, "/"));
    for got in futures_util::future::join_all(calls).await {
        let err = got.unwrap_err();
        assert!(
            matches!(&err, PoolError::Shared(e) if matches!(**e, PoolError::Connect(_))),
            "{err:?}"
        );
    }
}

#[tokio::test]
async fn an_http2_connection_that_goes_away_is_replaced() {
    let (addr, counts, mut closed) = goaway_node().await;
    let pool = pool(addr, 4, true);
    assert_eq!(fetch(&pool, addr, "/").await.unwrap(), "ok");
    // The node has sent GOAWAY and closed the connection.
    tokio::time::timeout(WAIT, closed.wait_for(|n| *n >= 1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fetch(&pool, addr, "/").await.unwrap(), "ok");
    assert_eq!(counts.connections(), 2, "on a new connection");
    assert_eq!(counts.requests(), 2);
}
