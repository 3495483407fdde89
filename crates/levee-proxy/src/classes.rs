//! Traffic classes: what a node's breakers are kept per.

/// Traffic classes by index: 0 `safe` (GET, HEAD, OPTIONS), 1 `unsafe` (the
/// rest), then the classes routes name with `breaker_class`.
#[derive(Debug, Clone)]
pub struct ClassTable {
    names: Vec<String>,
}

impl ClassTable {
    pub const SAFE: usize = 0;
    pub const UNSAFE: usize = 1;

    pub fn new<'a>(route_classes: impl IntoIterator<Item = &'a str>) -> Self {
        let mut names = vec!["safe".to_owned(), "unsafe".to_owned()];
        for c in route_classes {
            if !names.iter().any(|n| n == c) {
                names.push(c.to_owned());
            }
        }
        Self { names }
    }

    pub fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The default class of a method.
    pub fn of_method(method: &http::Method) -> usize {
        if matches!(
            *method,
            http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
        ) {
            Self::SAFE
        } else {
            Self::UNSAFE
        }
    }
}
