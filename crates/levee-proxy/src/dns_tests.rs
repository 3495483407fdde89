//! Node names: what a refresh does to the live state when answers change,
//! stay, or fail, with a scripted resolver and paused time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Mutex;

use levee_resilience::BreakerState;
use levee_telemetry::{Telemetry, Topology};

use super::*;
use crate::classes::ClassTable;
use crate::nodes::Outcome;

/// Answers each name from a table the test changes; counts lookups.
#[derive(Debug, Default)]
struct Script {
    answers: Mutex<HashMap<String, Result<Vec<SocketAddr>, ResolveError>>>,
    lookups: Mutex<usize>,
}

impl Script {
    fn set(&self, host: &str, answer: Result<&[&str], ResolveError>) {
        let answer = answer.map(|addrs| addrs.iter().map(|a| a.parse().unwrap()).collect());
        self.answers.lock().unwrap().insert(host.to_owned(), answer);
    }

    fn lookups(&self) -> usize {
        *self.lookups.lock().unwrap()
    }
}

impl Resolve for Script {
    fn resolve<'a>(&'a self, host: &'a str, _port: u16) -> ResolveFuture<'a> {
        *self.lookups.lock().unwrap() += 1;
        let answer = self.answers.lock().unwrap().get(host).cloned();
        Box::pin(async move { answer.unwrap_or(Err(ResolveError::Empty)) })
    }
}

fn config(nodes: &str) -> Arc<Config> {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[[backend]]\nname = \"app\"\nnodes = [{nodes}]\n\
         dns_refresh = \"5s\"\nslow_start = \"10s\"\n[backend.breaker]\nconsecutive_failures = 1\n\
         [[route]]\npath_prefix = \"/\"\nbackend = \"app\"\n"
    );
    Arc::new(levee_config::parse(&text, "t").unwrap())
}

/// A live state for `config`, its names resolved by `script`.
async fn shared(config: Arc<Config>, script: &Script) -> Arc<Shared> {
    let answers = resolve(names(&config), script).await;
    let resolved = Resolved::default().updated(&answers, &config);
    let state = ProxyState::build_resolved(config, 1, None, Arc::new(resolved));
    record(&state, &answers, None);
    Arc::new(Shared::new(
        Arc::new(state),
        Telemetry::new(Topology::default(), 1),
    ))
}

fn labels(shared: &Shared) -> Vec<String> {
    shared.current().backends[0]
        .nodes
        .nodes()
        .iter()
        .map(|n| n.stats.addr.clone())
        .collect()
}

fn name() -> Vec<NodeAddr> {
    vec![NodeAddr::Name {
        host: "app.test".into(),
        port: 80,
    }]
}

#[tokio::test]
async fn endpoints_follow_config_order_once_per_address() {
    let config = config("\"127.0.0.1:1\", \"app.test:80\", \"127.0.0.1:2\"");
    let script = Script::default();
    script.set("app.test", Ok(&["127.0.0.1:2", "127.0.0.1:3"]));
    let answers = resolve(names(&config), &script).await;
    assert_eq!(answers.len(), 1, "only names are looked up");
    let resolved = Resolved::default().updated(&answers, &config);
    let labels: Vec<String> = endpoints(&config.backends[0], &resolved)
        .into_iter()
        .map(|e| e.label)
        .collect();
    assert_eq!(
        labels,
        [
            "127.0.0.1:1",
            "app.test:80@127.0.0.1:2",
            "app.test:80@127.0.0.1:3"
        ],
        "127.0.0.1:2 is listed once, under the entry that reached it first"
    );
}

#[tokio::test]
async fn a_failed_lookup_keeps_the_last_addresses_and_a_removed_name_is_forgotten() {
    let config1 = config("\"app.test:80\"");
    let script = Script::default();
    script.set("app.test", Ok(&["127.0.0.1:2"]));
    let known = Resolved::default().updated(&resolve(names(&config1), &script).await, &config1);
    script.set("app.test", Err(ResolveError::Lookup("SERVFAIL".into())));
    let after = known.updated(&resolve(names(&config1), &script).await, &config1);
    assert_eq!(after, known);
    let config2 = config("\"127.0.0.1:9\"");
    assert_eq!(
        known.updated(&[], &config2),
        Resolved::default(),
        "a name gone from the config is dropped"
    );
}

#[tokio::test(start_paused = true)]
async fn a_changed_answer_adds_removes_and_keeps_nodes() {
    let script = Script::default();
    script.set(
        "app.test",
        Ok(&["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]),
    );
    let shared = shared(config("\"app.test:80\""), &script).await;
    let before = shared.current();
    let kept = Arc::clone(&before.backends[0].nodes.nodes()[1]);
    let removed = Arc::clone(&before.backends[0].nodes.nodes()[2]);
    assert!(!kept.ramp().is_ramping(), "startup nodes do not ramp");
    // Open the kept node's breaker, and hold a request on the one to go.
    let mut pick = before.backends[0]
        .nodes
        .pick(ClassTable::SAFE, &[0, 2], true, false)
        .unwrap();
    before.backends[0].nodes.record(
        &mut pick,
        tokio::time::Instant::now(),
        Duration::from_millis(1),
        Outcome::Failed(levee_telemetry::ErrorReason::UpstreamReset),
    );
    let in_flight = removed.enter();

    script.set(
        "app.test",
        Ok(&["127.0.0.1:4", "127.0.0.1:2", "127.0.0.1:1"]),
    );
    assert!(refresh(&shared, &name(), &script, "app").await);
    assert_eq!(
        labels(&shared),
        [
            "app.test:80@127.0.0.1:1",
            "app.test:80@127.0.0.1:2",
            "app.test:80@127.0.0.1:4"
        ],
        "answers are sorted"
    );
    let after = shared.current();
    let nodes = after.backends[0].nodes.nodes();
    assert!(
        Arc::ptr_eq(&nodes[1].stats, &kept.stats),
        "kept node, kept state"
    );
    assert_eq!(
        nodes[1].breaker(ClassTable::SAFE).unwrap().breaker.state(),
        BreakerState::Open,
        "its open breaker stays open"
    );
    assert!(nodes[2].ramp().is_ramping(), "the new node ramps in");
    assert!(!nodes[0].ramp().is_ramping());
    // The removed node lives on in the old state until its request ends.
    assert_eq!(removed.in_flight(), 1);
    drop(in_flight);
    assert_eq!(removed.in_flight(), 0);
    assert_eq!(after.backends[0].stats.dns.resolutions(true), 2);

    // The same answer again changes nothing.
    assert!(!refresh(&shared, &name(), &script, "app").await);
    assert!(Arc::ptr_eq(&shared.current(), &after));
}

#[tokio::test(start_paused = true)]
async fn a_failed_refresh_keeps_the_nodes_and_is_counted() {
    let script = Script::default();
    script.set("app.test", Ok(&["127.0.0.1:1"]));
    let shared = shared(config("\"app.test:80\""), &script).await;
    let before = shared.current();
    script.set(
        "app.test",
        Err(ResolveError::Lookup("no route to the name server".into())),
    );
    assert!(!refresh(&shared, &name(), &script, "app").await);
    assert!(Arc::ptr_eq(&shared.current(), &before), "nothing rebuilt");
    assert_eq!(labels(&shared), ["app.test:80@127.0.0.1:1"]);
    let dns = &before.backends[0].stats.dns;
    assert_eq!(dns.resolutions(false), 1);
    assert_eq!(dns.failing()[0].0, "app.test:80");
    assert!(dns.failing()[0].1.contains("no route to the name server"));

    script.set("app.test", Ok(&["127.0.0.1:1"]));
    refresh(&shared, &name(), &script, "app").await;
    assert!(dns.failing().is_empty(), "a good lookup clears it");
}

#[tokio::test(start_paused = true)]
async fn a_name_that_never_resolved_gets_its_nodes_at_a_later_refresh() {
    let script = Script::default();
    let shared = shared(config("\"app.test:80\""), &script).await;
    assert!(labels(&shared).is_empty(), "no nodes yet");
    assert!(shared.current().backends[0]
        .nodes
        .pick(ClassTable::SAFE, &[], true, false)
        .is_none());
    script.set("app.test", Ok(&["127.0.0.1:1"]));
    assert!(refresh(&shared, &name(), &script, "app").await);
    assert_eq!(labels(&shared), ["app.test:80@127.0.0.1:1"]);
}

#[tokio::test(start_paused = true)]
async fn the_refresh_task_looks_up_every_dns_refresh_and_publishes_changes() {
    let script = Arc::new(Script::default());
    script.set("app.test", Ok(&["127.0.0.1:1"]));
    let shared = shared(config("\"app.test:80\""), &script).await;
    let mut swapped = shared.subscribe();
    swapped.borrow_and_update();
    let resolver: Arc<dyn Resolve> = Arc::clone(&script) as Arc<dyn Resolve>;
    let task = spawn_refresh(&shared, &shared.current().config.backends[0], &resolver)
        .expect("a backend with a name has a refresh task");
    assert_eq!(script.lookups(), 1, "only the load's lookup so far");

    tokio::time::sleep(Duration::from_millis(4900)).await;
    assert_eq!(script.lookups(), 1, "not before dns_refresh");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(script.lookups(), 2);
    assert!(!swapped.has_changed().unwrap(), "same answer, no swap");

    script.set("app.test", Ok(&["127.0.0.1:2"]));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(script.lookups(), 3);
    assert!(swapped.has_changed().unwrap(), "a change is published");
    assert_eq!(labels(&shared), ["app.test:80@127.0.0.1:2"]);
    task.abort();
    let addresses_only = config("\"127.0.0.1:1\"");
    assert!(spawn_refresh(&shared, &addresses_only.backends[0], &resolver).is_none());
}

#[tokio::test]
async fn a_name_that_never_answers_fails_after_the_lookup_timeout() {
    #[derive(Debug)]
    struct Silent;
    impl Resolve for Silent {
        fn resolve<'a>(&'a self, _: &'a str, _: u16) -> ResolveFuture<'a> {
            Box::pin(std::future::pending())
        }
    }
    tokio::time::pause();
    let answers = resolve(&name(), &Silent).await;
    assert_eq!(
        answers[0].result,
        Err(ResolveError::Timeout(RESOLVE_TIMEOUT))
    );
}

#[tokio::test]
async fn localhost_resolves_through_the_hosts_file() {
    let answers = resolve(
        &[NodeAddr::Name {
            host: "localhost".into(),
            port: 8080,
        }],
        &SystemResolver,
    )
    .await;
    let addrs = answers[0].result.clone().unwrap();
    assert!(
        addrs.contains(&"127.0.0.1:8080".parse().unwrap()),
        "{addrs:?}"
    );
}
