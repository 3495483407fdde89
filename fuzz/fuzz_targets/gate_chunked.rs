//! The gate's chunked-body check on arbitrary bytes, arriving in pieces cut
//! where the fuzzer says. Nothing may panic, and:
//!
//! * the verdict (bytes taken, done, or the violation) does not depend on
//!   where the bytes were cut;
//! * a body the gate accepts is one a plain reading of RFC 9112 §7.1
//!   accepts too, ending at the same byte: sizes in hex, extensions and
//!   trailers skipped to their CRLF, data followed by CRLF, an empty line
//!   at the end.
#![no_main]

use arbitrary::Arbitrary;
use levee_proxy::gate::pieces::{chunked_in_pieces, chunked_whole};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    bytes: &'a [u8],
    cuts: Vec<u16>,
}

/// The end of a complete chunked body at the start of `bytes`, read
/// plainly; None if it is not complete or not valid in this reading.
fn reference_end(bytes: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let line_end = at + bytes[at..].windows(2).position(|w| w == b"\r\n")?;
        let line = &bytes[at..line_end];
        let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        if digits == 0 || digits > 16 {
            return None;
        }
        let size = u64::from_str_radix(std::str::from_utf8(&line[..digits]).ok()?, 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            // Trailer lines, then the empty line.
            loop {
                let end = at + bytes[at..].windows(2).position(|w| w == b"\r\n")?;
                if end == at {
                    return Some(at + 2);
                }
                at = end + 2;
            }
        }
        let size = usize::try_from(size).ok()?;
        let data_end = at.checked_add(size)?;
        if bytes.get(data_end..data_end + 2)? != b"\r\n" {
            return None;
        }
        at = data_end + 2;
    }
}

fuzz_target!(|input: Input<'_>| {
    let whole = chunked_whole(input.bytes);
    let cuts: Vec<usize> = input.cuts.iter().map(|&c| usize::from(c)).collect();
    assert_eq!(whole, chunked_in_pieces(input.bytes, &cuts));
    if let Ok((taken, true)) = whole {
        assert_eq!(
            reference_end(input.bytes),
            Some(taken),
            "accepted {:?}",
            String::from_utf8_lossy(&input.bytes[..taken])
        );
    }
});
