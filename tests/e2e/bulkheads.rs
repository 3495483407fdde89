//! Bulkheads: bounded concurrency and queues, released on every path, and
//! stuck writes that cannot clog reads or the admin listener.

use std::time::Duration;

use http::{Method, StatusCode};
use levee_testkit::Behavior;

use crate::common::*;

const WRITES_AND_READS: &str = r#"
[server]
listen = "127.0.0.1:0"

[[backend]]
name = "app"
nodes = ["127.0.0.1:1"]
connect_timeout = "300ms"
timeout = "10s"
max_in_flight = 32
max_queue = 8
queue_timeout = "100ms"

[[route]]
name = "writes"
path_prefix = "/api/"
methods = ["POST", "PUT", "PATCH", "DELETE"]
backend = "app"
max_in_flight = 4
max_queue = 2
queue_timeout = "100ms"

[[route]]
name = "reads"
path_prefix = "/"
backend = "app"
"#;

#[tokio::test]
async fn stuck_writes_do_not_clog_reads_or_health() {
    // The node hangs every write (a database that accepts no writes) and
    // answers reads at once: the Exalate incident.
    let app = node(Behavior::StuckOn {
        methods: vec![Method::POST],
    })
    .await;
    let levee = start_levee(WRITES_AND_READS, &[&[app.addr()]]).await;
    let client = client();

    // 16 writers: 4 take the route's slots and hang, 2 queue, the rest are refused.
    let mut writers = Vec::new();
    for _ in 0..16 {
        let client = client.clone();
        let u = url(&levee, "/api/orders");
        writers.push(tokio::spawn(async move {
            send(&client, request(Method::POST, &u), Duration::from_secs(30)).await
        }));
    }
    let topo = levee.telemetry.topology();
    let writes_bulkhead = topo.routes[0].bulkhead.clone().unwrap();
    assert!(
        eventually(Duration::from_secs(5), || writes_bulkhead.in_flight() == 4).await,
        "the writes route is full"
    );

    // With every write slot stuck, reads and /healthz answer fast.
    for _ in 0..50 {
        let got = get(&client, &url(&levee, "/items")).await;
        assert_eq!(got.status, StatusCode::OK);
        assert!(
            got.elapsed < Duration::from_secs(1),
            "read took {:?}",
            got.elapsed
        );
    }
    for _ in 0..10 {
        let got = get(&client, &admin_url(&levee, "/healthz")).await;
        assert_eq!(got.status, StatusCode::OK);
        assert!(
            got.elapsed < Duration::from_millis(500),
            "healthz took {:?}",
            got.elapsed
        );
    }

    // 10 writers were refused at once, the 2 queued ones after their 100 ms
    // wait: all 12 quickly, while 4 stay stuck.
    let finished = eventually(Duration::from_secs(3), || {
        writers.iter().filter(|w| w.is_finished()).count() >= 12
    })
    .await;
    assert!(finished, "12 writers were refused in time");
    let mut refused = Vec::new();
    for w in writers.iter_mut() {
        if w.is_finished() {
            refused.push(w.await.unwrap());
        }
    }
    assert_eq!(refused.len(), 12, "4 hang, 12 are refused");
    for got in &refused {
        assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(got.reason(), Some("bulkhead-full"));
        assert_eq!(got.headers["retry-after"], "1");
        assert!(
            got.elapsed < Duration::from_secs(2),
            "refused in {:?}",
            got.elapsed
        );
    }
    for w in writers {
        w.abort();
    }
    levee.shutdown().await;
}

#[tokio::test]
async fn a_queued_request_gets_a_slot_that_frees_in_time() {
    let app = node(Behavior::Slow {
        delay: Duration::from_millis(50),
        body_bytes: 1,
    })
    .await;
    // A critical route uses every slot and then the queue; normal and
    // sheddable ones are shed earlier (see the shedding tests).
    let cfg = ONE_ROUTE
        .replace("max_in_flight = 8", "max_in_flight = 1")
        .replace("queue_timeout = \"100ms\"", "queue_timeout = \"1s\"")
        .replace("name = \"all\"", "name = \"all\"\npriority = \"critical\"");
    let levee = start_levee(&cfg, &[&[app.addr()]]).await;
    let client = client();
    let (ua, ub) = (url(&levee, "/a"), url(&levee, "/b"));
    let (a, b) = tokio::join!(get(&client, &ua), get(&client, &ub));
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        b.status,
        StatusCode::OK,
        "the second waited in the queue, then ran"
    );
    levee.shutdown().await;
}

/// Slots come back after success, node error, deadline, connect failure,
/// reset mid-body, and a client that goes away mid-request.
#[tokio::test]
async fn slots_are_released_on_every_path() {
    let app = node(Behavior::Healthy {
        body_bytes: 64 * 1024,
    })
    .await;
    let cfg = ONE_ROUTE
        .replace("timeout = \"2s\"", "timeout = \"300ms\"")
        .replace("name = \"all\"", "name = \"all\"\nmax_in_flight = 2");
    let levee = start_levee(&cfg, &[&[app.addr()]]).await;
    let client = client();
    let free = |what: &str| {
        let held = slots_held(&levee);
        (held == 0)
            .then_some(())
            .ok_or(format!("{what}: {held} slots still held"))
    };

    let paths = [
        Behavior::Healthy {
            body_bytes: 64 * 1024,
        },
        Behavior::Status {
            code: 503,
            share: 1.0,
            methods: None,
        },
        Behavior::Stuck,
        Behavior::Refuse,
        Behavior::ResetMidBody {
            total_bytes: 100_000,
            after_bytes: 1_000,
        },
        Behavior::ResetMidHeaders,
    ];
    for behavior in paths {
        app.set_behavior(behavior.clone()).await.unwrap();
        for _ in 0..3 {
            let fut = client.request(request(Method::GET, &url(&levee, "/")));
            if let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_secs(5), fut).await {
                let _ = tokio::time::timeout(
                    Duration::from_secs(5),
                    http_body_util::BodyExt::collect(resp.into_body()),
                )
                .await;
            }
        }
        let released = eventually(Duration::from_secs(3), || free("").is_ok()).await;
        assert!(released, "{behavior:?}: {:?}", free("after"));
    }

    levee.shutdown().await;
}

/// A client that gives up while its request hangs at the node frees its slot
/// at once, long before the request's deadline.
#[tokio::test]
async fn a_client_that_goes_away_frees_its_slot() {
    let app = node(Behavior::Stuck).await;
    let cfg = ONE_ROUTE.replace("timeout = \"2s\"", "timeout = \"30s\"");
    let levee = start_levee(&cfg, &[&[app.addr()]]).await;
    let client = client();
    let u = url(&levee, "/");
    let gone = tokio::spawn(async move { client.request(request(Method::GET, &u)).await });
    assert!(eventually(Duration::from_secs(2), || slots_held(&levee) > 0).await);
    gone.abort();
    let _ = gone.await;
    assert!(
        eventually(Duration::from_secs(3), || slots_held(&levee) == 0).await,
        "client gone: {} slots still held",
        slots_held(&levee)
    );
    levee.shutdown().await;
}
