#![allow(clippy::unwrap_used, clippy::expect_used)]
use proptest::prelude::*;

use super::*;

impl RouteMatch {
    /// The meaning of a match, one route at a time: what the table must
    /// agree with.
    fn matches(&self, host: Option<&str>, method: &Method, path: &str) -> bool {
        if !path.starts_with(self.path_prefix.as_str()) {
            return false;
        }
        if let Some(methods) = &self.methods {
            if !methods.contains(method) {
                return false;
            }
        }
        match (&self.host, host) {
            (None, _) => true,
            (Some(want), Some(got)) => host_without_port(got).eq_ignore_ascii_case(want),
            (Some(_), None) => false,
        }
    }
}

/// The first route that matches, by scanning them in order.
fn scan(routes: &[RouteMatch], host: Option<&str>, method: &Method, path: &str) -> Option<usize> {
    routes.iter().position(|r| r.matches(host, method, path))
}

fn route(prefix: &str, methods: Option<&[Method]>, host: Option<&str>) -> RouteMatch {
    RouteMatch {
        path_prefix: prefix.into(),
        methods: methods.map(|m| m.to_vec()),
        host: host.map(Into::into),
    }
}

#[test]
fn first_match_wins_and_respects_method_and_host() {
    let routes = [
        route("/api/", Some(&[Method::POST]), Some("api.example.com")),
        route("/api/", None, None),
        route("/", None, None),
    ];
    let table = RouteTable::new(&routes);
    let find = |h, m: Method, p| table.first_match(h, &m, p);
    assert_eq!(
        find(Some("API.example.com:8080"), Method::POST, "/api/x"),
        Some(0)
    );
    assert_eq!(find(Some("other"), Method::POST, "/api/x"), Some(1));
    assert_eq!(find(None, Method::POST, "/api/x"), Some(1));
    assert_eq!(
        find(Some("api.example.com"), Method::GET, "/api/x"),
        Some(1)
    );
    assert_eq!(find(None, Method::GET, "/other"), Some(2));
    let first_only = RouteTable::new(&routes[..1]);
    assert_eq!(first_only.first_match(None, &Method::GET, "/x"), None);
}

#[test]
fn a_shorter_prefix_earlier_in_the_file_wins_over_a_longer_one() {
    let routes = [
        route("/a", None, None),
        route("/api/", None, Some("h")),
        route("/api/v1", None, None),
    ];
    let table = RouteTable::new(&routes);
    assert_eq!(
        table.first_match(Some("h"), &Method::GET, "/api/v1/x"),
        Some(0)
    );
    let routes = [route("/api/v1", None, None), route("/a", None, None)];
    let table = RouteTable::new(&routes);
    assert_eq!(table.first_match(None, &Method::GET, "/api/v1/x"), Some(0));
    assert_eq!(table.first_match(None, &Method::GET, "/api/v2"), Some(1));
    assert_eq!(table.first_match(None, &Method::GET, "/b"), None);
}

fn methods() -> impl Strategy<Value = Option<Vec<Method>>> {
    let pool = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::from_bytes(b"PURGE").unwrap(),
    ];
    prop::option::of(prop::sample::subsequence(pool.to_vec(), 1..=3))
}

/// Prefixes and paths over few bytes, so that they share prefixes often.
fn path(min: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec!['/', 'a', 'b', 'é']), min..6)
        .prop_map(|chars| chars.into_iter().collect())
}

fn route_strategy() -> impl Strategy<Value = RouteMatch> {
    (
        path(0).prop_map(|p| format!("/{p}")),
        methods(),
        prop::option::of(prop::sample::select(vec!["a.test", "b.test", "[::1]"])),
    )
        .prop_map(|(path_prefix, methods, host)| RouteMatch {
            path_prefix,
            methods,
            host: host.map(Into::into),
        })
}

fn request_host() -> impl Strategy<Value = Option<&'static str>> {
    prop::option::of(prop::sample::select(vec![
        "a.test",
        "A.Test:8080",
        "b.test",
        "c.test",
        "[::1]:80",
        "[::1]",
        "a.test:x",
    ]))
}

proptest! {
    #[test]
    fn the_table_answers_as_the_scan_in_file_order(
        routes in prop::collection::vec(route_strategy(), 0..24),
        requests in prop::collection::vec(
            (request_host(), prop::sample::select(vec![
                Method::GET, Method::POST, Method::DELETE, Method::from_bytes(b"PURGE").unwrap(),
            ]), path(0).prop_map(|p| format!("/{p}"))),
            1..16,
        ),
    ) {
        let table = RouteTable::new(&routes);
        for (host, method, path) in &requests {
            prop_assert_eq!(
                table.first_match(*host, method, path),
                scan(&routes, *host, method, path),
                "host {:?} method {} path {:?}", host, method, path
            );
        }
    }
}
