#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;

/// One node's traffic during one second.
#[derive(Debug, Clone, Copy)]
struct Load {
    requests: u64,
    failures: u64,
    latency_us: u64,
}

const fn load(requests: u64, failures: u64, latency_us: u64) -> Load {
    Load {
        requests,
        failures,
        latency_us,
    }
}

const HEALTHY: Load = load(100, 0, 10_000);

/// The thresholds these tests reason with (the mechanism has no defaults:
/// levee-config's `[backend.drift]` owns them); each expected second below
/// follows from these.
fn thresholds() -> DriftConfig {
    DriftConfig {
        error_rate_margin: 0.05,
        error_rate_factor: 3.0,
        latency_factor: 3.0,
        sustain: Duration::from_secs(10),
        min_requests: 20,
        window: Duration::from_secs(10),
    }
}

/// Cumulative counters for a pool plus the detector fed from them, ticked
/// once per paused-time second.
struct Sim {
    detector: DriftDetector,
    totals: Vec<NodeSample>,
    /// Seconds since the first tick.
    clock: u64,
}

impl Sim {
    /// Builds the pool and takes the first tick at second 0.
    fn new(nodes: usize) -> Self {
        let mut sim = Self {
            detector: DriftDetector::new(thresholds(), nodes),
            totals: vec![NodeSample::default(); nodes],
            clock: 0,
        };
        assert!(sim.detector.tick(&sim.totals).is_empty());
        sim
    }

    /// Runs `secs` seconds of `loads` (one per node), ticking after each;
    /// returns the changes with the second they happened at.
    async fn run(&mut self, secs: u64, loads: &[Load]) -> Vec<(u64, DriftChange)> {
        let mut out = Vec::new();
        for _ in 0..secs {
            tokio::time::advance(Duration::from_secs(1)).await;
            self.clock += 1;
            for (total, l) in self.totals.iter_mut().zip(loads) {
                total.requests += l.requests;
                total.failures += l.failures;
                total.latency_sum_us += l.requests * l.latency_us;
                total.latency_count += l.requests;
            }
            for change in self.detector.tick(&self.totals) {
                out.push((self.clock, change));
            }
        }
        out
    }
}

fn flagged(node: usize, reason: DriftReason) -> DriftChange {
    DriftChange {
        node,
        anomalous: true,
        reason,
    }
}

fn recovered(node: usize) -> DriftChange {
    DriftChange {
        node,
        anomalous: false,
        reason: DriftReason::Recovered,
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

/// Six nodes, node `bad` with `odd` and the rest healthy.
fn six_with(bad: usize, odd: Load) -> Vec<Load> {
    let mut loads = vec![HEALTHY; 6];
    loads[bad] = odd;
    loads
}

#[tokio::test(start_paused = true)]
async fn one_node_in_six_failing_17_percent_is_flagged_after_sustain() {
    let mut sim = Sim::new(6);
    let loads = six_with(5, load(100, 17, 10_000));
    let before = sim.run(10, &loads).await;
    assert!(before.is_empty(), "not before 10 s apart: {before:?}");
    assert!(!sim.detector.is_anomalous(5));
    // It first stood apart at second 1 (the first tick with a span), so the
    // flag comes at second 11.
    let changes = sim.run(20, &loads).await;
    assert_eq!(changes, vec![(11, flagged(5, DriftReason::ErrorRate))]);
    assert!(sim.detector.is_anomalous(5));
    assert!((0..5).all(|n| !sim.detector.is_anomalous(n)));
    let f = sim.detector.figures(5).unwrap();
    assert!(close(f.error_rate, 0.17));
    assert!(close(f.peer_error_rate, 0.0));
    assert_eq!(f.mean_latency, Duration::from_millis(10));
    assert_eq!(f.peer_mean_latency, Duration::from_millis(10));
}

#[tokio::test(start_paused = true)]
async fn a_small_gap_between_low_rates_is_not_flagged() {
    let mut sim = Sim::new(6);
    let mut loads = vec![load(100, 1, 10_000); 6];
    loads[0] = load(100, 2, 10_000);
    assert!(sim.run(60, &loads).await.is_empty(), "2% among peers at 1%");
    let f = sim.detector.figures(0).unwrap();
    assert!(close(f.error_rate, 0.02));
    assert!(close(f.peer_error_rate, 0.01));

    // Many times the peers' rate but under the margin: 4% among 0%.
    let mut sim = Sim::new(6);
    let loads = six_with(0, load(100, 4, 10_000));
    assert!(sim.run(60, &loads).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn over_the_margin_but_not_the_factor_is_not_flagged() {
    let mut sim = Sim::new(6);
    let mut loads = vec![load(100, 10, 10_000); 6];
    loads[3] = load(100, 25, 10_000);
    assert!(sim.run(60, &loads).await.is_empty(), "25% among 10%: 2.5x");
}

#[tokio::test(start_paused = true)]
async fn latency_drift_is_flagged() {
    let mut sim = Sim::new(6);
    let loads = six_with(2, load(100, 0, 40_000));
    let changes = sim.run(30, &loads).await;
    assert_eq!(changes, vec![(11, flagged(2, DriftReason::Latency))]);
    let f = sim.detector.figures(2).unwrap();
    assert_eq!(f.mean_latency, Duration::from_millis(40));
    assert_eq!(f.peer_mean_latency, Duration::from_millis(10));
}

#[tokio::test(start_paused = true)]
async fn a_latency_gap_under_a_millisecond_is_not_flagged() {
    let mut sim = Sim::new(6);
    let mut loads = vec![load(100, 0, 200); 6];
    loads[1] = load(100, 0, 900);
    assert!(sim.run(60, &loads).await.is_empty(), "4.5x but only 0.7 ms");
}

#[tokio::test(start_paused = true)]
async fn errors_win_over_latency_as_the_reason() {
    let mut sim = Sim::new(6);
    let loads = six_with(4, load(100, 50, 90_000));
    let changes = sim.run(30, &loads).await;
    assert_eq!(changes, vec![(11, flagged(4, DriftReason::ErrorRate))]);
}

#[tokio::test(start_paused = true)]
async fn a_healed_node_recovers_after_sustain() {
    let mut sim = Sim::new(6);
    let failing = six_with(5, load(100, 17, 10_000));
    assert_eq!(
        sim.run(20, &failing).await,
        vec![(11, flagged(5, DriftReason::ErrorRate))]
    );
    // Healed from second 21. The window still holds failures: 3 failing
    // seconds (51 of 1000) at second 27 stand apart, 2 at second 28 do not,
    // so it is calm from 28 and recovers at 38.
    let healed = vec![HEALTHY; 6];
    let before = sim.run(17, &healed).await;
    assert!(before.is_empty(), "{before:?}");
    assert!(sim.detector.is_anomalous(5));
    assert_eq!(sim.run(10, &healed).await, vec![(38, recovered(5))]);
    assert!(!sim.detector.is_anomalous(5));
}

#[tokio::test(start_paused = true)]
async fn standing_apart_again_breaks_the_calm() {
    let mut sim = Sim::new(6);
    let failing = six_with(0, load(100, 30, 10_000));
    sim.run(11, &failing).await;
    assert!(sim.detector.is_anomalous(0));
    // Calm for a while, then failing again before `sustain` has passed.
    let healed = vec![HEALTHY; 6];
    assert!(sim.run(15, &healed).await.is_empty());
    assert!(sim.run(5, &failing).await.is_empty());
    assert!(sim.run(30, &failing).await.is_empty(), "still flagged");
    assert!(sim.detector.is_anomalous(0));
}

#[tokio::test(start_paused = true)]
async fn a_one_second_burst_is_not_flagged() {
    let mut sim = Sim::new(6);
    let healthy = vec![HEALTHY; 6];
    sim.run(5, &healthy).await;
    // 100% for one second is 10% of the window for 10 ticks: apart for 9 s.
    assert!(sim
        .run(1, &six_with(1, load(100, 100, 10_000)))
        .await
        .is_empty());
    assert!(sim.run(30, &healthy).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn fewer_than_two_peers_never_flags() {
    let mut sim = Sim::new(2);
    let loads = [load(100, 50, 90_000), HEALTHY];
    assert!(sim.run(60, &loads).await.is_empty(), "two nodes");

    // Six nodes, but only one peer has enough traffic to compare with.
    let mut sim = Sim::new(6);
    let mut loads = vec![load(1, 0, 10_000); 6];
    loads[0] = load(100, 50, 10_000);
    loads[1] = HEALTHY;
    assert!(sim.run(60, &loads).await.is_empty(), "one peer");
}

#[tokio::test(start_paused = true)]
async fn three_nodes_are_enough() {
    let mut sim = Sim::new(3);
    let loads = [HEALTHY, load(100, 50, 10_000), HEALTHY];
    assert_eq!(
        sim.run(30, &loads).await,
        vec![(11, flagged(1, DriftReason::ErrorRate))]
    );
}

#[tokio::test(start_paused = true)]
async fn a_node_under_min_requests_is_not_judged() {
    let mut sim = Sim::new(6);
    let loads = six_with(3, load(1, 1, 10_000));
    assert!(sim.run(60, &loads).await.is_empty(), "10 per window < 20");
    let f = sim.detector.figures(3).unwrap();
    assert!(close(f.error_rate, 1.0), "figures are still reported");
}

#[tokio::test(start_paused = true)]
async fn a_drained_flagged_node_is_unflagged_after_sustain() {
    let mut sim = Sim::new(6);
    let failing = six_with(5, load(100, 17, 10_000));
    sim.run(20, &failing).await;
    assert!(sim.detector.is_anomalous(5));
    // No traffic from second 21: still judged (and apart) while the window
    // holds its last 100 requests at second 29, calm from 30.
    let drained = six_with(5, load(0, 0, 0));
    assert_eq!(sim.run(30, &drained).await, vec![(40, recovered(5))]);
}

#[tokio::test(start_paused = true)]
async fn a_changed_node_count_starts_over() {
    let mut sim = Sim::new(6);
    sim.run(15, &six_with(5, load(100, 50, 10_000))).await;
    assert!(sim.detector.is_anomalous(5));
    tokio::time::advance(Duration::from_secs(1)).await;
    let five = vec![NodeSample::default(); 5];
    assert!(sim.detector.tick(&five).is_empty());
    assert!(!sim.detector.is_anomalous(5));
    assert!(
        sim.detector.figures(0).is_none(),
        "one sample spans no time"
    );
}

#[tokio::test(start_paused = true)]
async fn figures_need_a_span_and_a_known_node() {
    let sim = Sim::new(6);
    assert!(sim.detector.figures(0).is_none());
    assert!(sim.detector.figures(6).is_none());
    assert!(!sim.detector.is_anomalous(99));
}

#[tokio::test(start_paused = true)]
async fn counters_that_go_backwards_read_as_no_traffic() {
    let mut d = DriftDetector::new(thresholds(), 3);
    let high = NodeSample {
        requests: 1_000,
        failures: 500,
        latency_sum_us: 10_000,
        latency_count: 1_000,
    };
    d.tick(&[high; 3]);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(d.tick(&[NodeSample::default(); 3]).is_empty());
    let f = d.figures(0).unwrap();
    assert!(close(f.error_rate, 0.0));
    assert_eq!(f.mean_latency, Duration::ZERO);
}

#[test]
fn median_of_odd_and_even_counts() {
    let median = |v: &[f64]| Sorted::new(v.to_vec()).without(None);
    assert_eq!(median(&[]), (0, None));
    assert_eq!(median(&[3.0, 1.0, 2.0]), (3, Some(2.0)));
    assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), (4, Some(2.5)));
    let sorted = Sorted::new(vec![4.0, 1.0, 3.0, 2.0]);
    assert_eq!(sorted.without(Some(1.0)), (3, Some(3.0)));
    assert_eq!(sorted.without(Some(3.0)), (3, Some(2.0)));
    assert_eq!(sorted.without(Some(9.0)), (4, Some(2.5)), "not one of them");
    assert_eq!(Sorted::new(vec![5.0]).without(Some(5.0)), (0, None));
}

proptest::proptest! {
    /// Leaving one value out of the sorted list gives the median of the
    /// others sorted on their own.
    #[test]
    fn the_median_without_one_value_is_the_others_median(
        values in proptest::collection::vec(0u8..20, 0..40),
        pick in 0usize..40,
    ) {
        let values: Vec<f64> = values.into_iter().map(f64::from).collect();
        let sorted = Sorted::new(values.clone());
        let (mine, mut others) = match values.get(pick) {
            Some(&v) => {
                let mut others = values.clone();
                others.remove(pick);
                (Some(v), others)
            }
            None => (None, values.clone()),
        };
        others.sort_by(f64::total_cmp);
        let n = others.len();
        let expected = match n {
            0 => None,
            _ if n % 2 == 1 => Some(others[n / 2]),
            _ => Some((others[n / 2 - 1] + others[n / 2]) / 2.0),
        };
        proptest::prop_assert_eq!(sorted.without(mine), (n, expected));
    }
}

#[test]
fn reasons_have_stable_names() {
    assert_eq!(DriftReason::ErrorRate.as_str(), "error-rate");
    assert_eq!(DriftReason::Latency.to_string(), "latency");
    assert_eq!(DriftReason::Recovered.as_str(), "recovered");
}

#[tokio::test(start_paused = true)]
async fn a_changed_threshold_changes_the_verdict_and_keeps_the_memory() {
    let mut sim = Sim::new(6);
    let loads = six_with(5, load(100, 17, 10_000));
    let changes = sim.run(12, &loads).await;
    assert_eq!(changes, vec![(11, flagged(5, DriftReason::ErrorRate))]);

    // 17% is within a 20-point margin of the peers' 0%: no longer apart, so
    // the flag clears after `sustain` of calm, judged from the next tick.
    sim.detector.set_config(DriftConfig {
        error_rate_margin: 0.2,
        ..thresholds()
    });
    assert!(sim.detector.is_anomalous(5), "the flag is kept");
    let changes = sim.run(20, &loads).await;
    assert_eq!(changes, vec![(23, recovered(5))]);

    // And the first margin flags it again.
    sim.detector.set_config(thresholds());
    let changes = sim.run(12, &loads).await;
    assert_eq!(changes, vec![(43, flagged(5, DriftReason::ErrorRate))]);
}
