//! The load harness end to end against levee only, every scenario with
//! tiny durations: each runs, produces its table and its raw figures, and
//! the figures levee vouches for hold (no failed request across reloads,
//! every idle connection kept open).
//!
//! A test binary of its own, not a module of tests/e2e: its closed loops
//! keep both CPUs busy for some seconds, and cargo runs test binaries one
//! after the other, so it never starves the timing-sensitive e2e tests.
#![allow(clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use levee_bench::{Kind, Options, Scenario};

#[test]
fn every_scenario_runs_against_levee() {
    let opts = Options {
        proxies: vec![Kind::Levee],
        conns: vec![8],
        duration: Duration::from_millis(300),
        warmup: Duration::from_millis(100),
        rate: 200.0,
        idle_conns: 50,
        reloads: 2,
        reload_every: Duration::from_millis(300),
        pin: false,
        progress: false,
        ..Options::quick(PathBuf::from(env!("CARGO_BIN_EXE_levee")))
    };
    let report = levee_bench::run(opts, "smoke".into()).expect("the harness runs");

    assert_eq!(report.tables.len(), Scenario::ALL.len());
    for t in &report.tables {
        assert!(!t.rows.is_empty(), "{}", t.markdown());
        assert!(t.rows.iter().any(|r| r[0] == "levee"), "{}", t.markdown());
    }
    let md = report.markdown();
    assert!(md.contains("### 1. Throughput"), "{md}");
    assert!(md.contains("Command: `smoke`"), "{md}");

    let r = &report.results;
    let throughput = r["throughput"].as_array().expect("throughput rows");
    assert_eq!(throughput.len(), 4, "direct and levee x 2 sizes");
    for row in throughput.iter().filter(|row| row["target"] == "levee") {
        assert!(row["load"]["statuses"]["200"].as_u64() > Some(0), "{row}");
        assert!(row["cpu_us_per_request"].as_f64() > Some(0.0), "{row}");
    }
    let idle = &r["idle"][0];
    assert_eq!(idle["opened"], 50, "{idle}");
    let reload = &r["reload"][0];
    assert_eq!(reload["reloads"], 2, "{reload}");
    let load = &reload["load"];
    assert!(load["statuses"]["200"].as_u64() > Some(0), "{load}");
    assert_eq!(load["errors"], 0, "{load}");
    assert_eq!(load["timeouts"], 0, "{load}");
    assert_eq!(
        load["statuses"].as_object().map(|s| s.len()),
        Some(1),
        "only 200s: {load}"
    );
    let stuck = &r["stuck-writes"][0]["stuck"];
    assert!(
        stuck["probe"]["statuses"]["200"].as_u64() > Some(0),
        "{stuck}"
    );
}
