//! Nodes given by name: `localhost:PORT` through the system resolver, and a
//! scripted resolver whose answers change while traffic flows.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use levee::Levee;
use levee_proxy::dns::{Resolve, ResolveError, ResolveFuture};
use levee_testkit::{AppNode, Behavior};

use crate::common::*;

/// Answers each host from a table the test changes.
#[derive(Debug, Default)]
struct Script(Mutex<HashMap<String, Result<Vec<SocketAddr>, ResolveError>>>);

impl Script {
    fn set(&self, host: &str, answer: Result<Vec<SocketAddr>, ResolveError>) {
        self.0.lock().unwrap().insert(host.to_owned(), answer);
    }
}

impl Resolve for Script {
    fn resolve<'a>(&'a self, host: &'a str, _port: u16) -> ResolveFuture<'a> {
        let answer = self.0.lock().unwrap().get(host).cloned();
        Box::pin(async move { answer.unwrap_or(Err(ResolveError::Empty)) })
    }
}

/// One backend whose only node entry is `node`, with `extra` backend keys.
fn config(node: &str, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[[backend]]
name = "app"
nodes = ["{node}"]
connect_timeout = "200ms"
timeout = "5s"
{extra}

[[route]]
name = "all"
path_prefix = "/"
backend = "app"
"#
    )
}

async fn named(name: &str, behavior: Behavior) -> AppNode {
    AppNode::start(name, behavior).await.unwrap()
}

/// The node of `/status` whose label ends with `@addr`.
fn status_node(status: &serde_json::Value, addr: SocketAddr) -> Option<&serde_json::Value> {
    status["backends"][0]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["addr"].as_str().unwrap().ends_with(&format!("@{addr}")))
}

/// Polls `/status` every 50 ms for up to `limit` until `check` holds.
async fn status_until(
    levee: &Levee,
    limit: Duration,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let until = tokio::time::Instant::now() + limit;
    loop {
        let status = status_json(&client(), levee).await;
        if check(&status) {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "not reached within {limit:?}: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_node_named_localhost_serves_traffic() {
    let app = named("local", Behavior::Healthy { body_bytes: 2 }).await;
    let port = app.addr().port();
    let levee = Levee::start(test_config(&config(&format!("localhost:{port}"), ""), &[]))
        .await
        .unwrap();
    let got = get(&client(), &url(&levee, "/")).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.headers["x-node"], "local");
    let status = status_json(&client(), &levee).await;
    let b = &status["backends"][0];
    assert_eq!(
        b["nodes"][0]["addr"],
        format!("localhost:{port}@127.0.0.1:{port}")
    );
    assert_eq!(b["dns"]["names"][0]["name"], format!("localhost:{port}"));
    assert_eq!(b["dns"]["resolutions"]["success"], 1);
    levee.shutdown().await;
}

/// Starts levee on `config` with `script` as its resolver.
async fn start(config: &str, script: &Arc<Script>) -> Levee {
    let resolver: Arc<dyn Resolve> = Arc::clone(script) as Arc<dyn Resolve>;
    Levee::start_with(test_config(config, &[]), resolver)
        .await
        .unwrap()
}

#[tokio::test]
async fn changing_answers_add_remove_and_keep_nodes() {
    // kept: carries traffic; opened: kept with its breaker open; removed:
    // answers one slow request while it is removed; added: new, ramps in.
    let kept = named("kept", Behavior::Healthy { body_bytes: 2 }).await;
    let opened = named(
        "opened",
        Behavior::Status {
            code: 500,
            share: 1.0,
            methods: None,
        },
    )
    .await;
    let removed = named("removed", Behavior::Healthy { body_bytes: 2 }).await;
    let added = named("added", Behavior::Healthy { body_bytes: 2 }).await;
    let script = Arc::new(Script::default());
    script.set(
        "app.test",
        Ok(vec![kept.addr(), opened.addr(), removed.addr()]),
    );
    let extra = "dns_refresh = \"200ms\"\nload_balancing = \"round_robin\"\n\
                 slow_start = \"500ms\"\n[backend.breaker]\nconsecutive_failures = 1\n\
                 open_for = \"60s\"\nopen_for_max = \"60s\"\n[backend.retry]\nmax_retries = 0";
    let levee = start(&config("app.test:80", extra), &script).await;
    let client = client();

    // Open `opened`'s breaker: its first 500 does it.
    let mut opened_now = false;
    for _ in 0..10 {
        let _ = get(&client, &url(&levee, "/")).await;
        let status = status_json(&client, &levee).await;
        if status_node(&status, opened.addr()).unwrap()["breakers"][0]["state"] == "open" {
            opened_now = true;
            break;
        }
    }
    assert!(opened_now, "the breaker of the 500 node opened");

    // A slow request to `removed`, in flight while it is removed.
    removed
        .set_behavior(Behavior::Slow {
            delay: Duration::from_millis(1500),
            body_bytes: 2,
        })
        .await
        .unwrap();
    // Round robin over `kept` and `removed`: a request either reaches
    // `removed` (and stays there 1.5 s) or finishes at `kept`. The count is
    // taken afresh for each request, so a late arrival is never mistaken
    // for the next one's, however slow the machine.
    let mut slow = None;
    for _ in 0..4 {
        let before = removed.stats().requests;
        let c = client.clone();
        let u = url(&levee, "/");
        let req = tokio::spawn(async move { get(&c, &u).await });
        let settled = eventually(Duration::from_secs(5), || {
            removed.stats().requests > before || req.is_finished()
        })
        .await;
        assert!(settled, "the request neither reached a node nor finished");
        if removed.stats().requests > before {
            slow = Some((req, before));
            break;
        }
        assert_eq!(req.await.unwrap().status, StatusCode::OK);
    }
    let (slow, before) = slow.expect("a request reached the node to be removed");

    script.set(
        "app.test",
        Ok(vec![kept.addr(), opened.addr(), added.addr()]),
    );
    let status = status_until(&levee, Duration::from_secs(3), |s| {
        status_node(s, added.addr()).is_some()
    })
    .await;
    assert!(status_node(&status, removed.addr()).is_none(), "{status:#}");
    assert_eq!(
        status_node(&status, opened.addr()).unwrap()["breakers"][0]["state"],
        "open",
        "the kept node's open breaker stays open"
    );

    let got = slow.await.unwrap();
    assert_eq!(
        got.status,
        StatusCode::OK,
        "the in-flight request completes"
    );
    assert_eq!(got.headers["x-node"], "removed");

    // The new node gets traffic as it ramps in; the removed one none. It
    // starts at weight 0.1 and grows only with calls it answers, and round
    // robin reaches it from one or two of the three turns (the open node's
    // turn passes to whichever follows it): a request goes there with
    // probability 1/30 or more, so 1,000 miss it with odds below 1e-14
    // (100 miss it with odds up to 1 in 30: test runs failed so).
    let mut reached_added = false;
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    for _ in 0..1000 {
        let got = get(&client, &url(&levee, "/")).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_ne!(got.headers["x-node"], "removed");
        if got.headers["x-node"] == "added" {
            reached_added = true;
            break;
        }
        if tokio::time::Instant::now() > until {
            break;
        }
    }
    assert!(reached_added, "the added node received traffic");
    assert_eq!(
        removed.stats().requests,
        before + 1,
        "no new traffic to the removed node"
    );
    levee.shutdown().await;
}

#[tokio::test]
async fn a_failing_lookup_keeps_the_last_addresses_and_is_counted() {
    let app = named("app", Behavior::Healthy { body_bytes: 2 }).await;
    let script = Arc::new(Script::default());
    script.set("app.test", Ok(vec![app.addr()]));
    let levee = start(&config("app.test:80", "dns_refresh = \"200ms\""), &script).await;
    script.set(
        "app.test",
        Err(ResolveError::Lookup("the name server is down".into())),
    );
    let status = status_until(&levee, Duration::from_secs(3), |s| {
        s["backends"][0]["dns"]["resolutions"]["failure"].as_u64() >= Some(1)
    })
    .await;
    let dns = &status["backends"][0]["dns"];
    assert_eq!(dns["failing"][0]["name"], "app.test:80");
    assert!(dns["failing"][0]["error"]
        .as_str()
        .unwrap()
        .contains("the name server is down"));
    assert_eq!(dns["names"][0]["addrs"][0], app.addr().to_string());
    let got = get(&client(), &url(&levee, "/")).await;
    assert_eq!(
        got.status,
        StatusCode::OK,
        "still served by the last address"
    );
    let metrics = metrics_text(&client(), &levee).await;
    assert!(
        metrics.lines().any(|l| l
            .starts_with("levee_dns_resolutions_total{backend=\"app\",result=\"failure\"}")
            && !l.ends_with(" 0")),
        "{metrics}"
    );
    levee.shutdown().await;
}

#[tokio::test]
async fn a_name_without_addresses_at_start_answers_503_until_it_resolves() {
    let app = named("late", Behavior::Healthy { body_bytes: 2 }).await;
    let script = Arc::new(Script::default());
    let levee = start(&config("app.test:80", "dns_refresh = \"200ms\""), &script).await;
    let got = get(&client(), &url(&levee, "/")).await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(got.reason(), Some("no-healthy-node"));
    script.set("app.test", Ok(vec![app.addr()]));
    status_until(&levee, Duration::from_secs(3), |s| {
        status_node(s, app.addr()).is_some()
    })
    .await;
    let got = get(&client(), &url(&levee, "/")).await;
    assert_eq!(got.status, StatusCode::OK);
    levee.shutdown().await;
}

#[tokio::test]
async fn a_reload_resolves_names_afresh_and_keeps_the_state_of_kept_nodes() {
    let first = named("first", Behavior::Healthy { body_bytes: 2 }).await;
    let second = named("second", Behavior::Healthy { body_bytes: 2 }).await;
    let script = Arc::new(Script::default());
    script.set("app.test", Ok(vec![first.addr()]));
    // A refresh far away: only the reload can pick up the new answer.
    let mut levee = start(&config("app.test:80", "dns_refresh = \"60s\""), &script).await;
    for _ in 0..3 {
        assert_eq!(
            get(&client(), &url(&levee, "/")).await.status,
            StatusCode::OK
        );
    }
    script.set("app.test", Ok(vec![first.addr(), second.addr()]));
    levee
        .reload(test_config(
            &config("app.test:80", "dns_refresh = \"60s\"\nmax_queue = 16"),
            &[],
        ))
        .await
        .unwrap();
    let status = status_json(&client(), &levee).await;
    assert!(status_node(&status, second.addr()).is_some(), "{status:#}");
    let kept = status_node(&status, first.addr()).unwrap();
    assert_eq!(
        kept["responses"]["2xx"], 3,
        "the kept node's counters continue"
    );
    assert_eq!(status["backends"][0]["dns"]["resolutions"]["success"], 2);
    levee.shutdown().await;
}

/// Answers with `a` and `b` in turn: a name whose addresses change at every
/// refresh.
#[derive(Debug)]
struct Flapping {
    a: SocketAddr,
    b: SocketAddr,
    calls: Mutex<usize>,
}

impl Resolve for Flapping {
    fn resolve<'a>(&'a self, _host: &'a str, _port: u16) -> ResolveFuture<'a> {
        let mut calls = self.calls.lock().unwrap();
        *calls += 1;
        let addr = if calls.is_multiple_of(2) {
            self.b
        } else {
            self.a
        };
        Box::pin(async move { Ok(vec![addr]) })
    }
}

#[tokio::test]
async fn address_changes_of_one_backend_do_not_interrupt_another_s_health_checks() {
    // Every probe of this node times out after 500 ms; the other backend's
    // addresses change every 100 ms. Were every backend's tasks restarted
    // at each change, no probe would ever run to its timeout.
    let hung = named("hung", Behavior::Stuck).await;
    let a = named("a", Behavior::Healthy { body_bytes: 2 }).await;
    let b = named("b", Behavior::Healthy { body_bytes: 2 }).await;
    let toml = format!(
        r#"
[server]
listen = "127.0.0.1:0"

[[backend]]
name = "checked"
nodes = ["{}"]
[backend.health_check]
path = "/probe"
interval = "1s"
timeout = "500ms"
jitter = 0.0
unhealthy_after = 2

[[backend]]
name = "flapping"
nodes = ["flapping.test:80"]
dns_refresh = "100ms"

[[route]]
path_prefix = "/"
backend = "checked"
"#,
        hung.addr()
    );
    let resolver = Arc::new(Flapping {
        a: a.addr(),
        b: b.addr(),
        calls: Mutex::new(0),
    });
    let levee = Levee::start_with(
        test_config(&toml, &[]),
        Arc::clone(&resolver) as Arc<dyn Resolve>,
    )
    .await
    .unwrap();
    let status = status_until(&levee, Duration::from_secs(6), |s| {
        s["backends"][0]["nodes"][0]["healthy"] == false
    })
    .await;
    let swaps = *resolver.calls.lock().unwrap();
    assert!(
        swaps >= 10,
        "the other backend changed {swaps} times: {status:#}"
    );
    levee.shutdown().await;
}
