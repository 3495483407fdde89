//! A failover with a capacity budget: a weak failover region under three
//! times the load it can take serves critical requests as fast as its node
//! answers alone, and sheds the rest by priority, fast, instead of queuing
//! them on it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use levee::traffic::{self, Tally};
use levee_testkit::Behavior;
use tokio::time::Instant;

use crate::common::*;

/// The weak region's bulkhead: what it can take at once. Nothing else is
/// tuned for it: failover_max_share and the shedding shares are defaults.
const CAPACITY: usize = 32;

/// A primary whose breaker, once open, stays open for the whole test, and a
/// weak failover region of one node; one route per priority.
const WEAK_REGION: &str = r#"
[server]
listen = "127.0.0.1:0"

[[backend]]
name = "primary"
nodes = ["127.0.0.1:1"]
connect_timeout = "200ms"
failover = "weak-region"

[backend.breaker]
consecutive_failures = 1
open_for = "60s"
open_for_max = "60s"
jitter = 0.0

[[backend]]
name = "weak-region"
nodes = ["127.0.0.1:2"]
max_in_flight = 32

[[route]]
name = "checkout"
path_prefix = "/checkout"
backend = "primary"
priority = "critical"

[[route]]
name = "catalog"
path_prefix = "/catalog"
backend = "primary"
priority = "normal"

[[route]]
name = "recommendations"
path_prefix = "/recommendations"
backend = "primary"
priority = "sheddable"
"#;

/// How long a client whose request was shed waits before its next one: the
/// second its `Retry-After: 1` asks for. Refused clients then do not spin
/// on the CPU the test shares, and still come back at three times what the
/// region can take.
const SHED_PAUSE: Duration = Duration::from_secs(1);

/// When the clients of a run stop: not before `min`, then once `counted`
/// answers have come in (a busy machine stretches the node's latency, and
/// with it the time a fixed count of answers takes), and at `max` whatever
/// the count.
#[derive(Clone)]
struct Run {
    started: Instant,
    min: Duration,
    max: Duration,
    counted: Arc<AtomicUsize>,
    needed: usize,
}

impl Run {
    fn over(&self) -> bool {
        let elapsed = self.started.elapsed();
        elapsed >= self.max
            || (elapsed >= self.min && self.counted.load(Ordering::Relaxed) >= self.needed)
    }
}

/// `workers` clients sending GET `url` back to back until the `run` is
/// over, their answers counted towards it when `counts`: every outcome,
/// and the latencies of the `503 shed` answers.
async fn clients(
    client: &HttpClient,
    url: String,
    workers: usize,
    run: &Run,
    counts: bool,
) -> (Tally, Vec<Duration>) {
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (client, url, run) = (client.clone(), url.clone(), run.clone());
            tokio::spawn(async move {
                let mut tally = Tally::default();
                let mut shed = Vec::new();
                while !run.over() {
                    let o = traffic::send(&client, Method::GET, &url, b"", Duration::from_secs(5))
                        .await;
                    if counts {
                        run.counted.fetch_add(1, Ordering::Relaxed);
                    }
                    if o.key == "503 shed" {
                        shed.push(o.latency);
                        tally.add(o);
                        tokio::time::sleep(SHED_PAUSE).await;
                    } else {
                        tally.add(o);
                    }
                }
                (tally, shed)
            })
        })
        .collect();
    let mut all = Tally::default();
    let mut shed = Vec::new();
    for t in tasks {
        let (t, s) = t.await.unwrap();
        for (k, v) in t.by_key {
            *all.by_key.entry(k).or_default() += v;
        }
        all.latencies.extend(t.latencies);
        shed.extend(s);
    }
    (all, shed)
}

fn quantile(latencies: &[Duration], q: f64) -> Duration {
    let mut l = latencies.to_vec();
    l.sort_unstable();
    l.get(((l.len().max(1) - 1) as f64 * q).round() as usize)
        .copied()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weak_failover_region_under_three_times_its_capacity_keeps_critical_requests_fast() {
    let primary = node(Behavior::Refuse).await;
    // A node that slows down as it takes more: 300 ms alone (long enough
    // that twice it leaves room for a busy machine's stalls), half a
    // millisecond more for every request already in flight.
    let loaded = Behavior::Loaded {
        base: Duration::from_millis(300),
        per_in_flight: Duration::from_micros(500),
        body_bytes: 8,
    };
    let weak = node(loaded.clone()).await;
    // Its twin, taken straight to while the test runs (the region's own
    // peak in flight stays levee's doing).
    let twin = node(loaded).await;
    let client = client();

    // The node's own latency: alone, straight to it.
    let own: Vec<Duration> = {
        let mut l = Vec::new();
        for _ in 0..10 {
            let o = traffic::send(
                &client,
                Method::GET,
                &format!("http://{}/", weak.addr()),
                b"",
                Duration::from_secs(5),
            )
            .await;
            assert!(o.ok, "{o:?}");
            l.push(o.latency);
        }
        l
    };
    let own = quantile(&own, 0.5);

    let levee = start_levee(WEAK_REGION, &[&[primary.addr()], &[weak.addr()]]).await;
    // The primary's breaker opens on its first refused connection; from
    // then on requests fail over.
    let mut failed_over = false;
    for _ in 0..20 {
        if get(&client, &url(&levee, "/checkout/warmup")).await.status == StatusCode::OK {
            failed_over = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(failed_over, "requests fail over to the weak region");
    let before = weak.stats();

    // Three times the region's capacity: 96 clients, two thirds of them
    // sheddable; more normal ones than their share of the budget. Four more
    // go straight to the node's twin meanwhile: the node's own latency on
    // this machine at this moment, stalls included, for the critical ones
    // to be held to.
    // 25 s, longer if need be (up to a minute) for the 200 critical answers
    // a p99 needs when a busy machine stretches the node's 300 ms.
    let run = Run {
        started: Instant::now(),
        min: Duration::from_secs(25),
        max: Duration::from_secs(60),
        counted: Arc::new(AtomicUsize::new(0)),
        needed: 200,
    };
    let ((critical, _), (normal, _), (sheddable, shed), (direct, _)) = tokio::join!(
        clients(&client, url(&levee, "/checkout"), 4, &run, true),
        clients(&client, url(&levee, "/catalog"), 28, &run, false),
        clients(&client, url(&levee, "/recommendations"), 64, &run, false),
        clients(&client, format!("http://{}/", twin.addr()), 4, &run, false),
    );
    let after = weak.stats();

    let p99 = critical.quantile(0.99);
    let own_meanwhile = direct.quantile(0.99);
    // Seen from the client: what its connection pool and a shared machine add.
    let (shed_p50, shed_p99) = (quantile(&shed, 0.5), quantile(&shed, 0.99));
    eprintln!(
        "node alone p50 {own:?}, straight to it meanwhile p99 {own_meanwhile:?}; critical {} sent, {} ok, p50 {:?} p99 {p99:?}; normal {:?}; \
         sheddable {:?}; shed answers p50 {shed_p50:?} p99 {shed_p99:?}; node peak in flight {}",
        critical.total(),
        critical.successes(),
        critical.quantile(0.5),
        normal.by_key,
        sheddable.by_key,
        after.peak_in_flight,
    );

    assert!(critical.total() >= 200, "{:?}", critical.by_key);
    let failed = critical.total() - critical.successes();
    assert!(
        failed * 1000 <= critical.total(),
        "critical requests keep >= 99.9% success: {:?}",
        critical.by_key
    );
    assert_eq!(direct.total(), direct.successes(), "{:?}", direct.by_key);
    assert!(
        p99 <= own.max(own_meanwhile) * 2,
        "critical p99 {p99:?} within twice the node's own latency (alone {own:?}, \
         meanwhile p99 {own_meanwhile:?})"
    );
    assert!(
        sheddable.count("503 shed") * 2 > sheddable.total(),
        "most sheddable requests are shed: {:?}",
        sheddable.by_key
    );
    assert!(
        normal.count("503 shed") > 0 && normal.successes() > 0,
        "normal requests fill their part, the rest is shed: {:?}",
        normal.by_key
    );
    for tally in [&critical, &normal, &sheddable] {
        assert_eq!(
            tally.successes() + tally.count("503 shed"),
            tally.total(),
            "answered or shed, nothing else (no queue timeouts): {:?}",
            tally.by_key
        );
    }
    // Shed answers come at once, never after a wait in a queue (which lasts
    // until a slot frees or queue_timeout passes). levee's own duration
    // histogram of the sheddable route (arrival to response headers) says
    // how fast: its few served requests take the node's latency, so the
    // shed ones are those under it. Generous bounds: the machine is shared.
    let histogram = levee.telemetry.topology().routes[2].latency.cumulative();
    let within = |bound: f64| {
        histogram
            .iter()
            .find(|(b, _)| *b >= bound)
            .map_or(0, |(_, n)| *n)
    };
    let shed_count = sheddable.count("503 shed");
    eprintln!(
        "levee's sheddable route: {} within 1 ms, {} within 5 ms, {} within 100 ms, of {} shed",
        within(0.001),
        within(0.005),
        within(0.1),
        shed_count
    );
    assert!(
        within(0.001) * 10 >= shed_count * 9,
        "nine shed answers in ten within 1 ms: {histogram:?}"
    );
    assert!(
        within(0.1) >= shed_count,
        "every shed answer well under the node's latency: {histogram:?}"
    );
    assert!(
        after.peak_in_flight as usize <= CAPACITY,
        "the region never gets more than its capacity: {}",
        after.peak_in_flight
    );
    assert!(after.requests > before.requests);

    let status = status_json(&client, &levee).await;
    let budget = &status["backends"][1]["failover_budget"];
    assert_eq!(budget["max_share"], 1.0, "{budget}");
    assert_eq!(budget["max_in_flight"], CAPACITY, "{budget}");
    assert!(
        status["backends"][1]["events"]["shed"].as_u64().unwrap() > 0,
        "sheds counted on the region: {}",
        status["backends"][1]["events"]
    );
    levee.shutdown().await;
}
