//! Micro-costs levee pays on every request: a bulkhead slot, a breaker,
//! header hygiene, request ids and outcome recording (route matching and
//! node selection are in the `scale` bench).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::FutureExt;
use http::{HeaderMap, HeaderValue};
use levee_config::BreakerConfig;
use levee_proxy::headers;
use levee_proxy::nodes::breaker_policy;
use levee_resilience::{Breaker, Bulkhead, CallOutcome, EjectionBudget, Precedence};
use levee_telemetry::{LatencyHistogram, OutcomeCounters};

fn bulkhead(c: &mut Criterion) {
    let b = Bulkhead::new(64, 32);
    c.bench_function("bulkhead acquire+release (free slot)", |bench| {
        bench.iter(|| {
            let until = tokio::time::Instant::now() + Duration::from_millis(100);
            let permit = b.acquire(Precedence::Normal, until).now_or_never();
            black_box(permit)
        })
    });
}

fn breaker(c: &mut Criterion) {
    let b = Breaker::new(breaker_policy(&BreakerConfig::default()));
    let budget = EjectionBudget::new(10, 50);
    let ok = CallOutcome {
        failed: false,
        elapsed: Duration::from_millis(3),
        unreachable: false,
    };
    c.bench_function("breaker admit + record (closed)", |bench| {
        bench.iter(|| {
            let (admission, _) = b.admit();
            black_box(admission);
            black_box(b.record(false, ok, &budget, || true))
        })
    });
}

fn header_hygiene(c: &mut Criterion) {
    let mut base = HeaderMap::new();
    for (k, v) in [
        ("host", "www.example.com"),
        ("user-agent", "bench/1.0"),
        ("accept", "*/*"),
        ("accept-encoding", "gzip, br"),
        ("connection", "keep-alive"),
        ("cookie", "session=abcdef0123456789"),
        ("x-forwarded-for", "203.0.113.9"),
    ] {
        base.insert(k, HeaderValue::from_static(v));
    }
    let peer = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    c.bench_function("strip hop-by-hop + set x-forwarded-*", |bench| {
        bench.iter_batched_ref(
            || base.clone(),
            |h| {
                let host = h.get("host").cloned();
                headers::strip_hop_by_hop(h);
                headers::set_forwarded(h, peer, "http", host.as_ref());
            },
            criterion::BatchSize::SmallInput,
        )
    });
    c.bench_function("generate request id", |bench| {
        bench.iter(headers::new_request_id)
    });
}

fn recording(c: &mut Criterion) {
    let outcomes = OutcomeCounters::default();
    let latency = LatencyHistogram::default();
    c.bench_function("record status + latency", |bench| {
        bench.iter(|| {
            outcomes.record_status(black_box(200));
            latency.observe(black_box(Duration::from_micros(850)));
        })
    });
}

criterion_group!(benches, bulkhead, breaker, header_hygiene, recording);
criterion_main!(benches);
