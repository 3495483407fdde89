//! Maps between byte offsets, lines and key paths in the source text.
//!
//! serde only keeps spans for its own errors; rules checked after
//! deserialisation find their line here, by walking the `toml_edit` document,
//! which remembers where every key was written.

use std::ops::Range;

use toml_edit::{Document, Item, Table, TableLike, Value};

/// One step of a key path: `backend[1].nodes[0]` is
/// `[Key("backend"), Index(1), Key("nodes"), Index(0)]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// Renders a path the way messages show it: `section[index].field`.
pub(crate) fn render(path: &[Seg<'_>]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => {
                out.push('[');
                out.push_str(&i.to_string());
                out.push(']');
            }
        }
    }
    out
}

/// 1-based line holding byte `offset` of `text`.
pub(crate) fn line_at(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Something in the document that a path step can lead to.
#[derive(Clone, Copy)]
enum Node<'a> {
    Item(&'a Item),
    Table(&'a Table),
    Value(&'a Value),
}

impl<'a> Node<'a> {
    fn table_like(self) -> Option<&'a dyn TableLike> {
        match self {
            Node::Item(item) => item.as_table_like(),
            Node::Table(table) => Some(table),
            Node::Value(value) => value.as_inline_table().map(|t| t as &dyn TableLike),
        }
    }

    fn index(self, i: usize) -> Option<(Node<'a>, Option<Range<usize>>)> {
        match self {
            Node::Item(Item::ArrayOfTables(tables)) => {
                tables.get(i).map(|t| (Node::Table(t), t.span()))
            }
            Node::Item(Item::Value(Value::Array(values))) | Node::Value(Value::Array(values)) => {
                values.get(i).map(|v| (Node::Value(v), v.span()))
            }
            _ => None,
        }
    }
}

/// Line of the deepest part of `path` that is written in the text.
///
/// A key left at its default is not in the text; then the line of the
/// enclosing table's header is the most useful place to point at.
pub(crate) fn line_of(doc: &Document<&str>, path: &[Seg<'_>]) -> Option<usize> {
    let mut node = Node::Item(doc.as_item());
    let mut best: Option<Range<usize>> = None;
    for seg in path {
        let step = match *seg {
            Seg::Key(k) => node
                .table_like()
                .and_then(|t| t.get_key_value(k))
                .map(|(key, item)| (Node::Item(item), key.span().or_else(|| item.span()))),
            Seg::Index(i) => node.index(i),
        };
        let Some((next, span)) = step else { break };
        node = next;
        if span.is_some() {
            best = span;
        }
    }
    best.map(|span| line_at(doc.raw(), span.start))
}

/// Key path of the innermost key or value whose text covers byte `offset`.
pub(crate) fn path_at(doc: &Document<&str>, offset: usize) -> Option<String> {
    search(Node::Item(doc.as_item()), offset, "")
}

fn covers(span: Option<Range<usize>>, offset: usize) -> bool {
    span.is_some_and(|s| s.contains(&offset) || s.start == offset)
}

fn search(node: Node<'_>, offset: usize, prefix: &str) -> Option<String> {
    if let Some(table) = node.table_like() {
        for (k, item) in table.iter() {
            let path = if prefix.is_empty() {
                k.to_owned()
            } else {
                format!("{prefix}.{k}")
            };
            if let Some(found) = search(Node::Item(item), offset, &path) {
                return Some(found);
            }
            let key_span = table.get_key_value(k).and_then(|(key, _)| key.span());
            if covers(key_span, offset) || covers(item.span(), offset) {
                return Some(path);
            }
        }
        return None;
    }
    let mut i = 0;
    while let Some((child, span)) = node.index(i) {
        let path = format!("{prefix}[{i}]");
        if let Some(found) = search(child, offset, &path) {
            return Some(found);
        }
        if covers(span, offset) {
            return Some(path);
        }
        i += 1;
    }
    None
}
