//! A node that answers every request head with the same bytes, written as
//! given: for the broken responses no HTTP library will produce (a garbage
//! status line, conflicting framing headers, an endless head).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// Largest request head read before the answer goes out anyway.
const MAX_HEAD: usize = 64 * 1024;

/// What a [`RawNode`] saw of its clients.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawStats {
    /// TCP connections accepted.
    pub connections: u64,
    /// Request heads answered.
    pub requests: u64,
    /// Requests that came on a connection already answered once: the
    /// client kept the connection after the broken answer.
    pub reused: u64,
    /// Connections the client closed after an answer.
    pub closed_by_client: u64,
}

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    requests: AtomicU64,
    reused: AtomicU64,
    closed_by_client: AtomicU64,
}

/// Answers every request head on `127.0.0.1` with `answer`, then waits for
/// the next head or for the client to close. Dropping it stops the node and
/// closes its connections.
#[derive(Debug)]
pub struct RawNode {
    addr: SocketAddr,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl RawNode {
    pub async fn start(answer: impl Into<Bytes>) -> std::io::Result<RawNode> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let answer = answer.into();
        let task = tokio::spawn(accept(listener, answer, Arc::clone(&counters)));
        Ok(RawNode {
            addr,
            counters,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stats(&self) -> RawStats {
        let c = &self.counters;
        RawStats {
            connections: c.connections.load(Ordering::Relaxed),
            requests: c.requests.load(Ordering::Relaxed),
            reused: c.reused.load(Ordering::Relaxed),
            closed_by_client: c.closed_by_client.load(Ordering::Relaxed),
        }
    }
}

impl Drop for RawNode {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet and so every connection.
        self.task.abort();
    }
}

async fn accept(listener: TcpListener, answer: Bytes, counters: Arc<Counters>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                counters.connections.fetch_add(1, Ordering::Relaxed);
                connections.spawn(serve(stream, answer.clone(), Arc::clone(&counters)));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Answers each head on `stream` until the client closes it.
async fn serve(mut stream: TcpStream, answer: Bytes, counters: Arc<Counters>) {
    let mut answered = false;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => {
                if answered {
                    counters.closed_by_client.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        let ended = head.windows(4).any(|w| w == b"\r\n\r\n");
        if !ended && head.len() < MAX_HEAD {
            continue;
        }
        head.clear();
        counters.requests.fetch_add(1, Ordering::Relaxed);
        if answered {
            counters.reused.fetch_add(1, Ordering::Relaxed);
        }
        answered = true;
        if stream.write_all(&answer).await.is_err() {
            return;
        }
    }
}
