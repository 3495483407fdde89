//! Encodes the telemetry as Prometheus text at scrape time.
//!
//! Reading atomics at scrape time (instead of registering one metric object
//! per series) keeps the request path free of the registry's locks and makes
//! every series of the live topology appear at 0 from startup.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

use levee_resilience::{BreakerState, TransitionReason};

use crate::config_status::ReloadResult;
use crate::stats::{
    BackendEvent, ErrorReason, LatencyHistogram, OutcomeCounters, StatusClass, TunnelClose,
};
use crate::tls::TlsHandshakeFailure;
use crate::Telemetry;

#[derive(Debug)]
pub(crate) struct TelemetryCollector {
    telemetry: Arc<Telemetry>,
}

impl TelemetryCollector {
    pub(crate) fn new(telemetry: Arc<Telemetry>) -> Self {
        Self { telemetry }
    }
}

type Fmt = Result<(), std::fmt::Error>;

impl Collector for TelemetryCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Fmt {
        let t = &self.telemetry;
        let topo = t.topology();

        let config = t.config_status();
        let mut m = encoder.encode_descriptor(
            "levee_config",
            "The config now live, by the hash of its text: replicas showing different hashes run different configs.",
            None,
            MetricType::Info,
        )?;
        m.encode_info(&[("hash", config.hash.as_str())])?;
        let mut m = encoder.encode_descriptor(
            "levee_config_reloads",
            "Config reloads by result; a failed one leaves the previous config live.",
            None,
            MetricType::Counter,
        )?;
        for result in ReloadResult::ALL {
            m.encode_family(&[("result", result.as_str())])?
                .encode_counter::<NoLabelSet, _, u64>(&t.reloads(result), None)?;
        }
        let loaded = config
            .loaded_at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let mut m = encoder.encode_descriptor(
            "levee_config_loaded_timestamp",
            "When the live config was loaded (Unix time).",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        m.encode_gauge(&loaded)?;

        let mut m = encoder.encode_descriptor(
            "levee_access_log_dropped",
            "Access log lines dropped rather than block the data plane (the writer fell behind or cannot write).",
            None,
            MetricType::Counter,
        )?;
        m.encode_counter::<NoLabelSet, _, u64>(
            &topo
                .access_log_dropped
                .load(std::sync::atomic::Ordering::Relaxed),
            None,
        )?;
        gauge(
            &mut encoder,
            "levee_ready",
            "1 while levee accepts traffic and is not draining.",
            i64::from(t.is_ready() && !t.is_draining()),
        )?;
        let age = t.heartbeat_age().map_or(f64::INFINITY, |a| a.as_secs_f64());
        let mut m = encoder.encode_descriptor(
            "levee_heartbeat_age",
            "Age of the stalest data-plane worker's last heartbeat tick; it grows when a worker is wedged.",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        m.encode_gauge(&age)?;
        gauge(
            &mut encoder,
            "levee_connections_open",
            "Client connections open now.",
            i64::try_from(t.connections_open()).unwrap_or(i64::MAX),
        )?;
        let mut m = encoder.encode_descriptor(
            "levee_connections",
            "Client connections accepted.",
            None,
            MetricType::Counter,
        )?;
        m.encode_counter::<NoLabelSet, _, u64>(&t.connections_total(), None)?;
        let mut m = encoder.encode_descriptor(
            "levee_tls_handshake_failures",
            "Client TLS handshakes that failed, by reason.",
            None,
            MetricType::Counter,
        )?;
        for why in TlsHandshakeFailure::ALL {
            m.encode_family(&[("reason", why.as_str())])?
                .encode_counter::<NoLabelSet, _, u64>(&t.tls_handshake_failures(why), None)?;
        }

        // Per route.
        let mut m = encoder.encode_descriptor(
            "levee_requests",
            "Requests by route and the status class the client saw.",
            None,
            MetricType::Counter,
        )?;
        for r in &topo.routes {
            by_class(
                &mut m,
                &r.outcomes,
                &[("route", r.name.as_str()), ("backend", r.backend.as_str())],
            )?;
        }
        by_class(&mut m, &topo.unrouted, &[("route", ""), ("backend", "")])?;
        let mut m = encoder.encode_descriptor(
            "levee_errors",
            "Requests levee answered or cut itself, by route and x-levee-error reason.",
            None,
            MetricType::Counter,
        )?;
        for r in &topo.routes {
            by_reason(
                &mut m,
                &r.outcomes,
                &[("route", r.name.as_str()), ("backend", r.backend.as_str())],
            )?;
        }
        by_reason(&mut m, &topo.unrouted, &[("route", ""), ("backend", "")])?;
        let mut m = encoder.encode_descriptor(
            "levee_request_duration",
            "Time from request received to response headers sent, by route.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for r in &topo.routes {
            histogram(
                &mut m,
                &r.latency,
                &[("route", r.name.as_str()), ("backend", r.backend.as_str())],
            )?;
        }
        let mut m = encoder.encode_descriptor(
            "levee_route_in_flight",
            "Requests holding a route bulkhead slot (0 for routes without one).",
            None,
            MetricType::Gauge,
        )?;
        for r in &topo.routes {
            let v = r.bulkhead.as_ref().map_or(0, |b| b.in_flight());
            m.encode_family(&[("route", r.name.as_str())])?
                .encode_gauge(&as_i64(v))?;
        }
        let mut m = encoder.encode_descriptor(
            "levee_route_queued",
            "Requests waiting for a route bulkhead slot.",
            None,
            MetricType::Gauge,
        )?;
        for r in &topo.routes {
            let v = r.bulkhead.as_ref().map_or(0, |b| b.queued());
            m.encode_family(&[("route", r.name.as_str())])?
                .encode_gauge(&as_i64(v))?;
        }
        let mut m = encoder.encode_descriptor(
            "levee_route_rate_limit_keys",
            "Client keys a route's per-client rate limit tracks now (0 without one).",
            None,
            MetricType::Gauge,
        )?;
        for (i, r) in topo.routes.iter().enumerate() {
            let rate_limit = topo.rate_limits.get(i).and_then(Option::as_ref);
            let v = rate_limit.map_or(0, |rl| rl.limit.tracked_keys());
            m.encode_family(&[("route", r.name.as_str())])?
                .encode_gauge(&as_i64(v))?;
        }
        let mut m = encoder.encode_descriptor(
            "levee_route_tunnels_open",
            "WebSocket tunnels open now, by route (they hold no bulkhead slot).",
            None,
            MetricType::Gauge,
        )?;
        for r in &topo.routes {
            m.encode_family(&[("route", r.name.as_str())])?
                .encode_gauge(&as_i64(r.tunnels.open()))?;
        }
        let mut m = encoder.encode_descriptor(
            "levee_tunnels_opened",
            "WebSocket tunnels established (the node answered 101), by route.",
            None,
            MetricType::Counter,
        )?;
        for r in &topo.routes {
            m.encode_family(&[("route", r.name.as_str())])?
                .encode_counter::<NoLabelSet, _, u64>(&r.tunnels.opened_total(), None)?;
        }
        let mut m = encoder.encode_descriptor(
            "levee_tunnels_closed",
            "WebSocket tunnels ended, by route and why: idle, client or node closed first, shutdown.",
            None,
            MetricType::Counter,
        )?;
        for r in &topo.routes {
            for why in TunnelClose::ALL {
                m.encode_family(&[("route", r.name.as_str()), ("reason", why.as_str())])?
                    .encode_counter::<NoLabelSet, _, u64>(&r.tunnels.closed_total(why), None)?;
            }
        }

        // Per backend.
        let mut m = encoder.encode_descriptor(
            "levee_backend_in_flight",
            "Requests holding a backend bulkhead slot.",
            None,
            MetricType::Gauge,
        )?;
        for b in topo.backends.iter().map(|b| &b.stats) {
            m.encode_family(&[("backend", b.name.as_str())])?
                .encode_gauge(&as_i64(b.bulkhead.in_flight()))?;
        }
        let mut m = encoder.encode_descriptor(
            "levee_backend_queued",
            "Requests waiting for a backend bulkhead slot.",
            None,
            MetricType::Gauge,
        )?;
        for b in topo.backends.iter().map(|b| &b.stats) {
            m.encode_family(&[("backend", b.name.as_str())])?
                .encode_gauge(&as_i64(b.bulkhead.queued()))?;
        }

        let mut m = encoder.encode_descriptor(
            "levee_backend_limit",
            "Concurrency the backend admits now: max_in_flight, or less while a returning pool ramps or the adaptive limit holds it back.",
            None,
            MetricType::Gauge,
        )?;
        for b in topo.backends.iter().map(|b| &b.stats) {
            m.encode_family(&[("backend", b.name.as_str())])?
                .encode_gauge(&b.admission.limit())?;
        }
        let mut m = encoder.encode_descriptor(
            "levee_backend_min_rtt_seconds",
            "The backend's no-load latency baseline (minimum RTT) as the adaptive limit and the return ramp measure it; absent until measured.",
            None,
            MetricType::Gauge,
        )?;
        for b in topo.backends.iter().map(|b| &b.stats) {
            if let Some(rtt) = b.admission.min_rtt() {
                m.encode_family(&[("backend", b.name.as_str())])?
                    .encode_gauge(&rtt.as_secs_f64())?;
            }
        }
        let mut m = encoder.encode_descriptor(
            "levee_backend_sampled_rtt_seconds",
            "The backend's mean latency over the adaptive limit's last sample window; absent until measured.",
            None,
            MetricType::Gauge,
        )?;
        for b in topo.backends.iter().map(|b| &b.stats) {
            if let Some(rtt) = b.admission.sampled_rtt() {
                m.encode_family(&[("backend", b.name.as_str())])?
                    .encode_gauge(&rtt.as_secs_f64())?;
            }
        }

        let mut m = encoder.encode_descriptor(
            "levee_backend_events",
            "What a backend did: retry, retry-budget-exhausted, failed-over, all-down-fail, all-down-try-all, shed.",
            None,
            MetricType::Counter,
        )?;
        for b in &topo.backends {
            let b = &b.stats;
            for event in BackendEvent::ALL {
                m.encode_family(&[("backend", b.name.as_str()), ("event", event.as_str())])?
                    .encode_counter::<NoLabelSet, _, u64>(&b.events(event), None)?;
            }
        }

        let mut m = encoder.encode_descriptor(
            "levee_dns_resolutions",
            "Lookups of a backend's node names (host:port), by result: success, failure (the last known addresses stay).",
            None,
            MetricType::Counter,
        )?;
        for b in topo.backends.iter().map(|b| &b.stats) {
            for (result, succeeded) in [("success", true), ("failure", false)] {
                m.encode_family(&[("backend", b.name.as_str()), ("result", result)])?
                    .encode_counter::<NoLabelSet, _, u64>(&b.dns.resolutions(succeeded), None)?;
            }
        }

        // Per node.
        let nodes = || {
            topo.backends
                .iter()
                .flat_map(|b| b.nodes.iter().map(|n| (&*n.stats, &*n.state)))
        };
        let mut m = encoder.encode_descriptor(
            "levee_node_requests",
            "Responses from a node by status class.",
            None,
            MetricType::Counter,
        )?;
        for (n, _) in nodes() {
            by_class(
                &mut m,
                &n.outcomes,
                &[("backend", n.backend.as_str()), ("node", n.addr.as_str())],
            )?;
        }
        let mut m = encoder.encode_descriptor(
            "levee_node_errors",
            "Failed calls to a node by reason (connect, tls, reset, protocol, deadline).",
            None,
            MetricType::Counter,
        )?;
        for (n, _) in nodes() {
            for reason in ErrorReason::ALL.iter().filter(|r| r.blames_node()) {
                m.encode_family(&[
                    ("backend", n.backend.as_str()),
                    ("node", n.addr.as_str()),
                    ("reason", reason.as_str()),
                ])?
                .encode_counter::<NoLabelSet, _, u64>(&n.outcomes.reason(*reason), None)?;
            }
        }
        let mut m = encoder.encode_descriptor(
            "levee_node_request_duration",
            "Time from sending a request to a node to its response headers.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (n, _) in nodes() {
            histogram(
                &mut m,
                &n.latency,
                &[("backend", n.backend.as_str()), ("node", n.addr.as_str())],
            )?;
        }
        let mut m = encoder.encode_descriptor(
            "levee_node_healthy",
            "1 while the node passes its active health checks (always 1 without checks).",
            None,
            MetricType::Gauge,
        )?;
        for (n, state) in nodes() {
            m.encode_family(&[("backend", n.backend.as_str()), ("node", n.addr.as_str())])?
                .encode_gauge(&i64::from(state.healthy()))?;
        }
        let mut m = encoder.encode_descriptor(
            "levee_node_anomalous",
            "1 while the node's error rate or latency stands apart from its peers' (drift alarm), even below breaker thresholds.",
            None,
            MetricType::Gauge,
        )?;
        for (n, _) in nodes() {
            m.encode_family(&[("backend", n.backend.as_str()), ("node", n.addr.as_str())])?
                .encode_gauge(&i64::from(n.is_anomalous()))?;
        }
        let mut m = encoder.encode_descriptor(
            "levee_node_weight",
            "Share of its normal traffic the node gets now (below 1 while it ramps back in on observed health).",
            None,
            MetricType::Gauge,
        )?;
        for (n, state) in nodes() {
            m.encode_family(&[("backend", n.backend.as_str()), ("node", n.addr.as_str())])?
                .encode_gauge(&state.weight())?;
        }
        let mut m = encoder.encode_descriptor(
            "levee_breaker_state",
            "Circuit breaker per node and traffic class: 0 closed, 1 open, 2 half-open.",
            None,
            MetricType::Gauge,
        )?;
        let breakers: Vec<_> = nodes().map(|(n, state)| (n, state.breakers())).collect();
        for (n, breakers) in &breakers {
            for b in breakers {
                let v: i64 = match b.state {
                    BreakerState::Closed => 0,
                    BreakerState::Open => 1,
                    BreakerState::HalfOpen => 2,
                };
                m.encode_family(&[
                    ("backend", n.backend.as_str()),
                    ("node", n.addr.as_str()),
                    ("class", b.class.as_str()),
                ])?
                .encode_gauge(&v)?;
            }
        }
        let mut m = encoder.encode_descriptor(
            "levee_breaker_transitions",
            "Breaker moves per node and class, by reason (failure-rate, slow-rate, consecutive-failures, open-elapsed, probe-failed, probes-succeeded).",
            None,
            MetricType::Counter,
        )?;
        for (n, breakers) in &breakers {
            for b in breakers {
                for reason in TransitionReason::ALL {
                    m.encode_family(&[
                        ("backend", n.backend.as_str()),
                        ("node", n.addr.as_str()),
                        ("class", b.class.as_str()),
                        ("reason", reason.as_str()),
                    ])?
                    .encode_counter::<NoLabelSet, _, u64>(&b.transitions(reason), None)?;
                }
            }
        }
        let mut m = encoder.encode_descriptor(
            "levee_breaker_ejections_refused",
            "Times a breaker would have opened but max_ejected_percent kept the node in.",
            None,
            MetricType::Counter,
        )?;
        for (n, breakers) in &breakers {
            for b in breakers {
                m.encode_family(&[
                    ("backend", n.backend.as_str()),
                    ("node", n.addr.as_str()),
                    ("class", b.class.as_str()),
                ])?
                .encode_counter::<NoLabelSet, _, u64>(&b.ejections_refused, None)?;
            }
        }
        let mut m = encoder.encode_descriptor(
            "levee_node_in_flight",
            "Requests in flight to a node.",
            None,
            MetricType::Gauge,
        )?;
        for (n, state) in nodes() {
            m.encode_family(&[("backend", n.backend.as_str()), ("node", n.addr.as_str())])?
                .encode_gauge(&state.in_flight())?;
        }
        Ok(())
    }
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> Fmt {
    encoder
        .encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&value)
}

fn by_class(m: &mut MetricEncoder, o: &OutcomeCounters, labels: &[(&str, &str); 2]) -> Fmt {
    for class in StatusClass::ALL {
        let set = [
            (labels[0].0, labels[0].1),
            (labels[1].0, labels[1].1),
            ("class", class.as_str()),
        ];
        m.encode_family(&set)?
            .encode_counter::<NoLabelSet, _, u64>(&o.class(class), None)?;
    }
    Ok(())
}

fn by_reason(m: &mut MetricEncoder, o: &OutcomeCounters, labels: &[(&str, &str); 2]) -> Fmt {
    for reason in ErrorReason::ALL {
        let set = [
            (labels[0].0, labels[0].1),
            (labels[1].0, labels[1].1),
            ("reason", reason.as_str()),
        ];
        m.encode_family(&set)?
            .encode_counter::<NoLabelSet, _, u64>(&o.reason(reason), None)?;
    }
    Ok(())
}

fn histogram(m: &mut MetricEncoder, h: &LatencyHistogram, labels: &impl EncodeLabelSet) -> Fmt {
    m.encode_family(labels)?.encode_histogram::<NoLabelSet>(
        h.sum_seconds(),
        h.count(),
        &h.cumulative(),
        None,
    )
}

fn as_i64(v: usize) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
