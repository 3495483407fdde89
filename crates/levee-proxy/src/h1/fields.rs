//! A node's response field lines as they came, rather than in a
//! `HeaderMap`: levee's HTTP/1 writer copies them to the client, so most
//! answers never hash a name, fill a map or drop one. A map is built only
//! for a reader that needs one (hyper's HTTP/2 server, a tunnel's 101).

use std::ops::Range;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::headers;

/// The field lines of one response head: each one's name, and where its
/// value lies in the head's bytes. Values were checked by the head's
/// scanner against the same rule `HeaderValue` applies. Boxed: a response
/// is moved many times on its way out, and this is one pointer of it.
#[derive(Debug)]
pub struct Fields(Box<Inner>);

#[derive(Debug)]
struct Inner {
    head: Bytes,
    lines: Vec<(HeaderName, Range<usize>)>,
    /// A `Connection` line is among them: the names it lists are hop-by-hop
    /// too, and [`Fields::end_to_end`] must read it.
    connection: bool,
    /// A line of the fixed hop-by-hop set is among them.
    hop: bool,
    /// Two names of the same length (modulo 64) are among them: a name may
    /// be repeated. One bit per length seen.
    lengths: u64,
    maybe_repeated: bool,
}

impl Fields {
    /// `head`: the bytes the lines' value ranges index.
    pub(super) fn new(head: Bytes, capacity: usize) -> Self {
        Self(Box::new(Inner {
            head,
            lines: Vec::with_capacity(capacity),
            connection: false,
            hop: false,
            lengths: 0,
            maybe_repeated: false,
        }))
    }

    pub(super) fn push(&mut self, name: HeaderName, value: Range<usize>) {
        let f = &mut *self.0;
        if headers::is_hop_by_hop(&name) {
            f.hop = true;
            f.connection |= name == http::header::CONNECTION;
        }
        let bit = 1u64 << (name.as_str().len() % 64);
        f.maybe_repeated |= f.lengths & bit != 0;
        f.lengths |= bit;
        f.lines.push((name, value));
    }

    /// Every line is end-to-end and no name is repeated: the lines, in
    /// order, are what [`Fields::by_name`] gives.
    pub fn plain(&self) -> bool {
        !self.0.hop && !self.0.maybe_repeated
    }

    /// The value of a line, as bytes.
    pub(super) fn value(&self, at: &Range<usize>) -> &[u8] {
        &self.0.head[at.clone()]
    }

    /// Bytes of the head, shared.
    pub(super) fn slice(&self, at: Range<usize>) -> Bytes {
        self.0.head.slice(at)
    }

    /// Every line, hop-by-hop ones included.
    pub fn all(&self) -> impl Iterator<Item = (&HeaderName, &[u8])> {
        let f = &*self.0;
        f.lines.iter().map(|(n, at)| (n, &f.head[at.clone()]))
    }

    /// The lines a proxy passes on: without the fixed hop-by-hop set and
    /// the names `Connection` lists, as [`headers::strip_hop_by_hop`]
    /// leaves a map.
    pub fn end_to_end(&self) -> EndToEnd<'_> {
        EndToEnd {
            fields: self,
            named: self.named(),
            next: 0,
        }
    }

    /// All the lines in a map, in their order.
    pub fn into_map(self) -> HeaderMap {
        let Inner { head, lines, .. } = *self.0;
        let mut map = HeaderMap::with_capacity(lines.len());
        for (name, at) in lines {
            if let Ok(value) = HeaderValue::from_maybe_shared(head.slice(at)) {
                map.append(name, value);
            }
        }
        map
    }

    /// The end-to-end lines by name, as a map gives them: each name once,
    /// where it first appears, with the values of all its lines.
    pub fn by_name(&self) -> ByName<'_> {
        ByName {
            fields: self,
            named: self.named(),
            next: 0,
        }
    }

    /// The bytes of the head the lines are in: room enough to write them.
    pub fn head_len(&self) -> usize {
        self.0.head.len()
    }

    fn named(&self) -> Vec<HeaderName> {
        if !self.0.connection {
            return Vec::new();
        }
        let listed = self
            .all()
            .filter(|(n, _)| **n == http::header::CONNECTION)
            .map(|(_, v)| v);
        headers::connection_named(listed)
    }

    /// The end-to-end lines put before what `map` holds: the map a writer
    /// that takes one needs, as if the node's lines had been read into it
    /// and stripped of the hop-by-hop ones.
    pub fn prepend_end_to_end(&self, map: &mut HeaderMap) {
        let mut merged = HeaderMap::with_capacity(self.0.lines.len() + map.len());
        for (name, value) in self.end_to_end() {
            if let Ok(value) = HeaderValue::from_maybe_shared(self.0.head.slice_ref(value)) {
                merged.append(name.clone(), value);
            }
        }
        let mut last = None;
        for (name, value) in std::mem::take(map) {
            if let Some(name) = name {
                last = Some(name);
            }
            if let Some(name) = &last {
                merged.append(name.clone(), value);
            }
        }
        *map = merged;
    }
}

/// The end-to-end lines of [`Fields`], in order.
pub struct EndToEnd<'a> {
    fields: &'a Fields,
    named: Vec<HeaderName>,
    next: usize,
}

impl<'a> Iterator for EndToEnd<'a> {
    type Item = (&'a HeaderName, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let f = &*self.fields.0;
        while let Some((name, at)) = f.lines.get(self.next) {
            self.next += 1;
            if headers::is_hop_by_hop(name) || self.named.contains(name) {
                continue;
            }
            return Some((name, &f.head[at.clone()]));
        }
        None
    }
}

/// The end-to-end lines of [`Fields`] by name ([`Fields::by_name`]).
pub struct ByName<'a> {
    fields: &'a Fields,
    named: Vec<HeaderName>,
    next: usize,
}

impl<'a> Iterator for ByName<'a> {
    type Item = (&'a HeaderName, Values<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        let lines = &self.fields.0.lines;
        while let Some((name, _)) = lines.get(self.next) {
            let at = self.next;
            self.next += 1;
            if headers::is_hop_by_hop(name)
                || self.named.contains(name)
                || lines[..at].iter().any(|(n, _)| n == name)
            {
                continue;
            }
            let values = Values {
                fields: self.fields,
                name,
                next: at,
            };
            return Some((name, values));
        }
        None
    }
}

/// The values of one name's lines, in order.
pub struct Values<'a> {
    fields: &'a Fields,
    name: &'a HeaderName,
    next: usize,
}

impl<'a> Iterator for Values<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let f = &*self.fields.0;
        while let Some((name, at)) = f.lines.get(self.next) {
            self.next += 1;
            if name == self.name {
                return Some(&f.head[at.clone()]);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn fields(lines: &[(&str, &str)]) -> Fields {
        let mut head = Vec::new();
        let mut at = Vec::new();
        for (n, v) in lines {
            let start = head.len();
            head.extend_from_slice(v.as_bytes());
            at.push((
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                start..head.len(),
            ));
        }
        let mut f = Fields::new(Bytes::from(head), lines.len());
        for (n, r) in at {
            f.push(n, r);
        }
        f
    }

    #[test]
    fn end_to_end_leaves_what_strip_hop_by_hop_leaves() {
        let lines = [
            ("content-type", "text/plain"),
            ("connection", "close, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("transfer-encoding", "chunked"),
            ("x-kept", "a"),
            ("connection", "X-Other"),
            ("x-other", "2"),
            ("x-kept", "b"),
        ];
        let f = fields(&lines);
        let mut stripped = fields(&lines).into_map();
        headers::strip_hop_by_hop(&mut stripped);
        let mut got = HeaderMap::new();
        f.prepend_end_to_end(&mut got);
        assert_eq!(got, stripped);
        let order: Vec<&str> = f.end_to_end().map(|(n, _)| n.as_str()).collect();
        assert_eq!(order, ["content-type", "x-kept", "x-kept"]);
    }

    #[test]
    fn by_name_gives_what_a_stripped_map_drains() {
        let lines = [
            ("x-a", "1"),
            ("connection", "x-gone"),
            ("set-cookie", "a=1"),
            ("x-gone", "0"),
            ("x-a", "2"),
            ("te", "trailers"),
            ("set-cookie", "b=2"),
            ("date", "now"),
        ];
        let f = fields(&lines);
        let got: Vec<(String, Vec<Vec<u8>>)> = f
            .by_name()
            .map(|(n, v)| (n.to_string(), v.map(<[u8]>::to_vec).collect()))
            .collect();
        let mut map = fields(&lines).into_map();
        headers::strip_hop_by_hop(&mut map);
        let mut want: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
        for (name, value) in map.drain() {
            match name {
                Some(n) => want.push((n.to_string(), vec![value.as_bytes().to_vec()])),
                None => want.last_mut().unwrap().1.push(value.as_bytes().to_vec()),
            }
        }
        // The map's removals reorder its other names (it swaps the last
        // entry into a removed one's place); the lines keep the node's.
        let order: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(order, ["x-a", "set-cookie", "date"]);
        want.sort();
        let mut got = got;
        got.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn the_map_holds_every_line_in_order_and_prepends_before_what_was_there() {
        let f = fields(&[("x-a", "1"), ("upgrade", "websocket"), ("x-a", "2")]);
        let mut map = HeaderMap::new();
        map.append("x-b", HeaderValue::from_static("3"));
        map.append("x-a", HeaderValue::from_static("4"));
        f.prepend_end_to_end(&mut map);
        let got: Vec<(&str, &[u8])> = map
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes()))
            .collect();
        assert_eq!(
            got,
            [
                ("x-a", &b"1"[..]),
                ("x-a", b"2"),
                ("x-a", b"4"),
                ("x-b", b"3")
            ]
        );
        assert!(!f.plain());
        assert!(fields(&[("x-a", "1"), ("x-bbb", "2"), ("date", "3")]).plain());
        assert!(
            !fields(&[("x-a", "1"), ("x-b", "2")]).plain(),
            "same length: maybe repeated"
        );
        let all = f.into_map();
        assert_eq!(all.len(), 3);
        assert_eq!(all["upgrade"], "websocket");
    }
}
