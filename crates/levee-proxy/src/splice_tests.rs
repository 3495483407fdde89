#![allow(clippy::unwrap_used, clippy::expect_used)]

use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;

const IDLE: Duration = Duration::from_secs(10);

/// A splice between two in-memory sockets; returns the far ends (the
/// client's and the node's) and the splice's task.
fn spliced() -> (
    DuplexStream,
    DuplexStream,
    tokio::task::JoinHandle<TunnelClose>,
) {
    let (client, client_side) = duplex(64 * 1024);
    let (node, node_side) = duplex(64 * 1024);
    let task = tokio::spawn(Splice::new(client_side, node_side, IDLE));
    (client, node, task)
}

#[tokio::test(start_paused = true)]
async fn bytes_cross_both_ways_until_one_side_closes() {
    let (mut client, mut node, task) = spliced();
    let big = vec![7u8; 100 * 1024];
    let writer = tokio::spawn(async move {
        client.write_all(&big).await.unwrap();
        client
    });
    let mut got = vec![0u8; 100 * 1024];
    node.read_exact(&mut got).await.unwrap();
    assert!(
        got.iter().all(|b| *b == 7),
        "larger than the buffer, intact"
    );
    let mut client = writer.await.unwrap();

    node.write_all(b"pong").await.unwrap();
    let mut pong = [0u8; 4];
    client.read_exact(&mut pong).await.unwrap();
    assert_eq!(&pong, b"pong");

    client.write_all(b"last words").await.unwrap();
    client.shutdown().await.unwrap();
    let mut rest = Vec::new();
    node.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b"last words", "delivered, then the end of stream");
    assert_eq!(task.await.unwrap(), TunnelClose::Client);
    let mut after = Vec::new();
    client.read_to_end(&mut after).await.unwrap();
    assert!(after.is_empty(), "the whole tunnel is closed");
}

#[tokio::test(start_paused = true)]
async fn a_silent_tunnel_is_cut_at_the_idle_timeout_and_traffic_defers_it() {
    let (mut client, mut node, task) = spliced();
    // Traffic every 6 s (under the 10 s bound) for 30 s keeps it open.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(6)).await;
        client.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        node.read_exact(&mut one).await.unwrap();
    }
    assert!(!task.is_finished());
    let quiet = Instant::now();
    assert_eq!(task.await.unwrap(), TunnelClose::Idle);
    let waited = quiet.elapsed();
    assert!(
        waited >= IDLE && waited < IDLE + Duration::from_secs(1),
        "{waited:?}"
    );
    let mut rest = Vec::new();
    node.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "the node sees the tunnel closed");
}

#[tokio::test(start_paused = true)]
async fn a_node_gone_mid_tunnel_closes_the_client_side() {
    let (mut client, node, task) = spliced();
    drop(node);
    assert_eq!(task.await.unwrap(), TunnelClose::Node);
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "the client reads the end of the tunnel");
}
