#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::io::{Read, Write};
use std::time::Duration;

use levee_telemetry::{Telemetry, Topology};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::*;

fn shared() -> Arc<Shared> {
    let state = crate::stack::testing::state(
        "[[backend]]\nname = \"app\"\nnodes = [\"127.0.0.1:1\"]\nconnect_timeout = \"100ms\"\n[[route]]\npath_prefix = \"/\"\nbackend = \"app\"\n",
    );
    Arc::new(Shared::new(state, Telemetry::new(Topology::default(), 1)))
}

/// `n` connections: the clients (plain sockets, read without the
/// runtime) and levee's ends.
async fn pairs(n: usize) -> Vec<(std::net::TcpStream, TcpStream, SocketAddr)> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut all = Vec::new();
    for _ in 0..n {
        let client = std::net::TcpStream::connect(addr).unwrap();
        client.set_nonblocking(true).unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        all.push((client, stream, peer));
    }
    all
}

/// Lets the lot's task run until it holds `n` connections (bounded).
async fn settle(lot: &Lot, n: usize) {
    for _ in 0..1000 {
        if lot.len() == n {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("the lot holds {}, not {n}", lot.len());
}

/// The client saw its connection closed (no bytes wait).
fn closed(client: &mut std::net::TcpStream) -> bool {
    matches!(client.read(&mut [0u8; 1]), Ok(0))
}

fn slot(slots: &Arc<Semaphore>, shared: &Shared) -> ConnSlot {
    let permit = Arc::clone(slots).try_acquire_owned().unwrap();
    shared.telemetry.connection_opened();
    ConnSlot::new(permit, Arc::clone(&shared.telemetry))
}

/// Each connection closes at its own deadline, whatever the order it
/// parked in, and gives its `max_connections` slot back.
#[tokio::test(start_paused = true)]
async fn parked_connections_expire_at_their_deadlines_in_any_park_order() {
    let shared = shared();
    let lot = Arc::new(Lot::new(Arc::clone(&shared), 0).unwrap());
    let (_tx, rx) = watch::channel(false);
    tokio::spawn(Arc::clone(&lot).run(rx));
    let slots = Arc::new(Semaphore::new(3));
    let mut clients = Vec::new();
    let start = Instant::now();
    for ((client, stream, peer), after) in pairs(3).await.into_iter().zip([10, 5, 20]) {
        let deadline = start + Duration::from_secs(after);
        assert!(lot
            .park(stream, peer, slot(&slots, &shared), deadline)
            .is_ok());
        clients.push(client);
    }
    settle(&lot, 3).await;
    assert_eq!(
        slots.available_permits(),
        0,
        "parked connections hold slots"
    );

    tokio::time::advance(Duration::from_secs(6)).await;
    settle(&lot, 2).await;
    assert!(closed(&mut clients[1]), "the 5 s one closed");
    assert!(!closed(&mut clients[0]) && !closed(&mut clients[2]));
    assert_eq!(slots.available_permits(), 1);

    tokio::time::advance(Duration::from_secs(5)).await;
    settle(&lot, 1).await;
    assert!(closed(&mut clients[0]), "the 10 s one closed");
    assert!(!closed(&mut clients[2]));

    tokio::time::advance(Duration::from_secs(10)).await;
    settle(&lot, 0).await;
    assert!(closed(&mut clients[2]), "the 20 s one closed");
    assert_eq!(slots.available_permits(), 3);
    assert_eq!(shared.telemetry.connections_open(), 0);
}

/// A drain closes the parked connections at once (their slots go back),
/// and the lot takes none after it.
#[tokio::test(start_paused = true)]
async fn a_drain_closes_parked_connections_and_the_lot_takes_no_more() {
    let shared = shared();
    let lot = Arc::new(Lot::new(Arc::clone(&shared), 0).unwrap());
    let (tx, rx) = watch::channel(false);
    let running = tokio::spawn(Arc::clone(&lot).run(rx));
    let slots = Arc::new(Semaphore::new(3));
    let mut all = pairs(3).await;
    let (late_client, late, late_peer) = all.pop().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut clients = Vec::new();
    for (client, stream, peer) in all {
        assert!(lot
            .park(stream, peer, slot(&slots, &shared), deadline)
            .is_ok());
        clients.push(client);
    }
    settle(&lot, 2).await;

    tx.send_replace(true);
    settle(&lot, 0).await;
    tokio::time::timeout(Duration::from_secs(1), running)
        .await
        .unwrap()
        .unwrap();
    assert!(clients.iter_mut().all(closed), "closed at once");
    assert_eq!(slots.available_permits(), 3);

    let refused = lot.park(late, late_peer, slot(&slots, &shared), deadline);
    assert!(refused.is_err(), "a draining lot gives the connection back");
    drop((refused, late_client));
}

/// Bytes the client sent before its connection parked (or while it
/// parks) wake it at once, and the request is answered by a connection
/// task resumed from the lot; once the answer is out the connection parks
/// again.
#[tokio::test]
async fn bytes_sent_while_parking_are_answered_and_the_connection_parks_again() {
    let shared = shared();
    let lot = Arc::new(Lot::new(Arc::clone(&shared), 0).unwrap());
    let (_tx, rx) = watch::channel(false);
    tokio::spawn(Arc::clone(&lot).run(rx));
    let slots = Arc::new(Semaphore::new(1));
    let (client, stream, peer) = pairs(1).await.pop().unwrap();
    let mut client = client;
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    assert!(lot
        .park(stream, peer, slot(&slots, &shared), deadline)
        .is_ok());

    client.set_nonblocking(false).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let answer = tokio::task::spawn_blocking(move || {
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        while !String::from_utf8_lossy(&answer).contains("upstream-connect") {
            let n = client.read(&mut buf).unwrap();
            assert!(n > 0, "closed before the answer");
            answer.extend_from_slice(&buf[..n]);
        }
        (String::from_utf8_lossy(&answer).into_owned(), client)
    });
    let (answer, _client) = tokio::time::timeout(Duration::from_secs(15), answer)
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    for _ in 0..100 {
        if lot.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(lot.len(), 1, "idle again, parked again");
    assert_eq!(slots.available_permits(), 0, "still one open connection");
}

/// A client that sent its request just before a drain is answered (with
/// `Connection: close`), then closed, even when the drain reaches the lot
/// before the lot has seen the bytes.
#[tokio::test]
async fn a_drain_answers_a_parked_connection_whose_client_had_sent() {
    let shared = shared();
    let lot = Arc::new(Lot::new(Arc::clone(&shared), 0).unwrap());
    let (tx, rx) = watch::channel(false);
    tokio::spawn(Arc::clone(&lot).run(rx));
    let slots = Arc::new(Semaphore::new(1));
    let (mut client, stream, peer) = pairs(1).await.pop().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    assert!(lot
        .park(stream, peer, slot(&slots, &shared), deadline)
        .is_ok());
    tx.send_replace(true);

    client.set_nonblocking(false).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let answer = tokio::task::spawn_blocking(move || {
        let mut answer = Vec::new();
        let _ = client.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    });
    let answer = tokio::time::timeout(Duration::from_secs(15), answer)
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 502"), "answered: {answer:?}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(
        tokio::time::timeout(Duration::from_secs(5), Arc::clone(&slots).acquire_owned())
            .await
            .is_ok(),
        "its slot is given back once it closed"
    );
}

/// What the lot keeps per parked connection, besides the kernel's socket
/// and the slab's and heap's spare capacity: under 100 bytes.
#[test]
fn a_parked_connection_costs_the_lot_under_100_bytes() {
    let entry = std::mem::size_of::<Entry>();
    let expiry = std::mem::size_of::<Reverse<(Instant, u32, u32)>>();
    assert!(entry + expiry < 100, "entry {entry} + expiry {expiry}");
}
