//! Durations are written as human strings (`"500ms"`, `"5s"`, `"1m"`), never as
//! bare numbers, so the unit is always visible in the file.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A duration as written in the file, already parsed by `humantime`.
///
/// Parsing happens during deserialisation so a bad string is reported with the
/// span of the value, hence with its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DurationText(pub(crate) Duration);

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(DurationVisitor)
    }
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = DurationText;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(r#"a duration string such as "500ms", "5s", "1m" or "1h""#)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        parse(v).map(DurationText).map_err(E::custom)
    }
}

/// Parses `"500ms"`-style text; the error says how to write it instead.
pub(crate) fn parse(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| {
        format!(
            r#"invalid duration "{text}" ({e}); write a number with a unit, such as "500ms", "5s", "1m" or "1h""#
        )
    })
}

/// Renders a duration the way it would be written in the file.
pub(crate) fn show(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}
