//! Which route a request takes: the first route in config order whose host,
//! methods and path prefix all match it.
//!
//! A [`RouteTable`] finds it without walking the route list: a map from
//! host to the routes tied to it, and for those and for the routes of any
//! host a prefix tree, walked once along the request's path. The cost grows
//! with the path's length, never with the number of routes.

use std::borrow::Cow;
use std::collections::HashMap;

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

/// The routes of one config version, indexed for matching.
#[derive(Debug, Default)]
pub struct RouteTable {
    /// Routes tied to a host, by that host (lowercase, as the config keeps it).
    by_host: HashMap<Box<str>, PrefixTree>,
    /// Routes for any host.
    any_host: PrefixTree,
}

impl RouteTable {
    /// Indexes `routes`; a match answers a position in this sequence.
    pub fn new<'a>(routes: impl IntoIterator<Item = &'a RouteMatch>) -> Self {
        let mut table = Self::default();
        for (index, route) in routes.into_iter().enumerate() {
            let tree = match &route.host {
                Some(host) => table.by_host.entry(host.as_str().into()).or_default(),
                None => &mut table.any_host,
            };
            tree.insert(
                route.path_prefix.as_bytes(),
                index,
                route.methods.as_deref(),
            );
        }
        table
    }

    /// The position of the first route matching the request. `host` is the
    /// request's, perhaps with a port and in any case.
    pub fn first_match(&self, host: Option<&str>, method: &Method, path: &str) -> Option<usize> {
        let any = self.any_host.first_match(method, path);
        let tied = host
            .and_then(|h| self.host_tree(h))
            .and_then(|tree| tree.first_match(method, path));
        match (tied, any) {
            (Some(t), Some(a)) => Some(t.min(a)),
            (t, a) => t.or(a),
        }
    }

    fn host_tree(&self, host: &str) -> Option<&PrefixTree> {
        if self.by_host.is_empty() {
            return None;
        }
        let host = host_without_port(host);
        // Hosts compare ASCII case-insensitively; most arrive lowercase.
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(host.to_ascii_lowercase())
        } else {
            Cow::Borrowed(host)
        };
        self.by_host.get(&*host)
    }
}

/// Routes by path prefix: a radix tree over the prefixes' bytes.
#[derive(Debug, Default)]
struct PrefixTree {
    root: PrefixNode,
}

#[derive(Debug, Default)]
struct PrefixNode {
    /// The bytes from the parent to this node (empty only at the root).
    label: Box<[u8]>,
    /// The routes whose prefix ends here, in config order; none follows
    /// one that takes every method, as none of them could ever match.
    routes: Vec<Candidate>,
    /// Sorted by the first byte of their labels, which differ.
    children: Vec<PrefixNode>,
}

#[derive(Debug)]
struct Candidate {
    index: usize,
    /// `None`: every method.
    methods: Option<Box<[Method]>>,
}

impl PrefixTree {
    /// Adds route `index`; routes must come in config order.
    fn insert(&mut self, prefix: &[u8], index: usize, methods: Option<&[Method]>) {
        let mut node = &mut self.root;
        let mut rest = prefix;
        while let Some(&first) = rest.first() {
            let at = match node
                .children
                .binary_search_by_key(&first, PrefixNode::first)
            {
                Ok(at) => at,
                Err(at) => {
                    node.children.insert(
                        at,
                        PrefixNode {
                            label: rest.into(),
                            ..PrefixNode::default()
                        },
                    );
                    at
                }
            };
            let child = &mut node.children[at];
            let common = child
                .label
                .iter()
                .zip(rest)
                .take_while(|(a, b)| a == b)
                .count();
            if common < child.label.len() {
                child.split(common);
            }
            rest = &rest[common..];
            node = child;
        }
        if node.routes.last().is_some_and(|c| c.methods.is_none()) {
            return;
        }
        node.routes.push(Candidate {
            index,
            methods: methods.map(Into::into),
        });
    }

    /// The lowest route index among the prefixes of `path` that take `method`.
    fn first_match(&self, method: &Method, path: &str) -> Option<usize> {
        let mut best: Option<usize> = None;
        let mut node = &self.root;
        let mut rest = path.as_bytes();
        loop {
            if let Some(found) = node.first_taking(method) {
                best = Some(best.map_or(found, |b| b.min(found)));
            }
            let Some(&first) = rest.first() else {
                return best;
            };
            let Ok(at) = node
                .children
                .binary_search_by_key(&first, PrefixNode::first)
            else {
                return best;
            };
            let child = &node.children[at];
            match rest.strip_prefix(&*child.label) {
                Some(after) => rest = after,
                None => return best,
            }
            node = child;
        }
    }
}

impl PrefixNode {
    fn first(&self) -> u8 {
        self.label.first().copied().unwrap_or_default()
    }

    /// Cuts this node's label after `at` bytes; the rest, with this node's
    /// routes and children, becomes its only child.
    fn split(&mut self, at: usize) {
        let tail = PrefixNode {
            label: self.label[at..].into(),
            routes: std::mem::take(&mut self.routes),
            children: std::mem::take(&mut self.children),
        };
        self.label = self.label[..at].into();
        self.children = vec![tail];
    }

    fn first_taking(&self, method: &Method) -> Option<usize> {
        self.routes
            .iter()
            .find(|c| c.methods.as_ref().is_none_or(|m| m.contains(method)))
            .map(|c| c.index)
    }
}

#[cfg(test)]
#[path = "routing_tests.rs"]
mod tests;
