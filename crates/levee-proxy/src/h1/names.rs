//! Header names as a peer spells them, remembered by position on each
//! thread: a node (or a client) sends the same names in the same order on
//! every message, and comparing a name's bytes costs a fraction of parsing
//! it again ([`HeaderName::from_bytes`] finds the standard name or copies
//! the bytes, each time).

use std::cell::RefCell;

use http::header::{HeaderName, InvalidHeaderName};

/// Field lines remembered per message, the first ones.
const SLOTS: usize = 16;

thread_local! {
    /// Names of the requests' field lines (h1 server).
    pub static REQUESTS: RefCell<Names> = const { RefCell::new(Names::new()) };
    /// Names of the responses' field lines (node client).
    pub static RESPONSES: RefCell<Names> = const { RefCell::new(Names::new()) };
}

/// The name of each of the first [`SLOTS`] field lines of the last message
/// that had one there, as received and as parsed.
#[derive(Debug)]
pub struct Names {
    slots: [Option<(Box<[u8]>, HeaderName)>; SLOTS],
}

impl Names {
    pub const fn new() -> Self {
        Self {
            slots: [const { None }; SLOTS],
        }
    }

    /// The name of field line `i` when `line` starts with the spelling
    /// remembered for it and a colon: that spelling's length and its name.
    /// No byte of such a name needs checking: the spelling was a valid one.
    pub fn known(&self, i: usize, line: &[u8]) -> Option<(usize, HeaderName)> {
        let (seen, name) = self.slots.get(i)?.as_ref()?;
        (line.get(seen.len()) == Some(&b':') && line.starts_with(seen))
            .then(|| (seen.len(), name.clone()))
    }

    /// The name of field line `i`, spelled `raw`.
    pub fn name(&mut self, i: usize, raw: &[u8]) -> Result<HeaderName, InvalidHeaderName> {
        let Some(slot) = self.slots.get_mut(i) else {
            return HeaderName::from_bytes(raw);
        };
        if let Some((seen, name)) = slot {
            if **seen == *raw {
                return Ok(name.clone());
            }
        }
        let name = HeaderName::from_bytes(raw)?;
        *slot = Some((raw.into(), name.clone()));
        Ok(name)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_name_is_parsed_again_when_its_spelling_changes() {
        let mut names = Names::new();
        assert_eq!(names.name(0, b"Content-Type").unwrap(), "content-type");
        assert_eq!(names.name(0, b"Content-Type").unwrap(), "content-type");
        assert_eq!(names.name(0, b"X-Custom").unwrap(), "x-custom");
        assert_eq!(names.name(0, b"x-custom").unwrap(), "x-custom");
        assert_eq!(names.name(1, b"ETag").unwrap(), "etag");
        assert!(names.name(1, b"bad name").is_err());
        // The slot kept what it had: a bad name is not remembered.
        assert_eq!(names.name(1, b"ETag").unwrap(), "etag");
        // Past the slots, every name is parsed.
        assert_eq!(names.name(SLOTS, b"Via").unwrap(), "via");
    }
}
