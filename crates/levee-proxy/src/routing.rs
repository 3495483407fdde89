//! Which route a request takes: first match wins, in config order.

use http::Method;

use crate::headers::host_without_port;

/// What a route matches on.
#[derive(Debug, Clone)]
pub struct RouteMatch {
    pub path_prefix: String,
    pub methods: Option<Vec<Method>>,
    /// Lowercase, without port.
    pub host: Option<String>,
}

impl RouteMatch {
    pub fn matches(&self, host: Option<&str>, method: &Method, path: &str) -> bool {
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

/// Index of the first route in `routes` that matches.
pub fn first_match<'a, I>(
    routes: I,
    host: Option<&str>,
    method: &Method,
    path: &str,
) -> Option<usize>
where
    I: IntoIterator<Item = &'a RouteMatch>,
{
    routes
        .into_iter()
        .position(|r| r.matches(host, method, path))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let find = |h, m: Method, p| first_match(&routes, h, &m, p);
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
        assert_eq!(first_match(&routes[..1], None, &Method::GET, "/x"), None);
    }
}
