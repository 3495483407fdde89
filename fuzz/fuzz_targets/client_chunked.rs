//! levee's HTTP/1 server decoding a client's chunked request body from
//! arbitrary bytes, arriving in pieces cut where the fuzzer says. Nothing
//! may panic, and:
//!
//! * the data, the end and the bytes left after it do not depend on where
//!   the bytes were cut;
//! * the decoder is never stricter than the gate's scan: a body the gate
//!   accepts is decoded to its end with the data a plain reading gives
//!   (the chunks' data, in order), and a body the gate refuses fails with
//!   the gate's violation.
#![no_main]

use arbitrary::Arbitrary;
use levee_proxy::gate::pieces::chunked_whole;
use levee_proxy::h1::server::pieces::chunked_in_pieces;
use levee_proxy::h1::server::ReadError;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    bytes: &'a [u8],
    cuts: Vec<u16>,
}

/// The data of the valid chunked body at the start of `bytes` (the gate
/// said it ends at `end`), read plainly.
fn reference_data(bytes: &[u8], end: usize) -> Vec<u8> {
    let mut data = Vec::new();
    let mut at = 0;
    while at < end {
        let line_end = at + bytes[at..].windows(2).position(|w| w == b"\r\n").unwrap();
        let line = &bytes[at..line_end];
        let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        let size = u64::from_str_radix(std::str::from_utf8(&line[..digits]).unwrap(), 16).unwrap();
        at = line_end + 2;
        if size == 0 {
            break;
        }
        let size = usize::try_from(size).unwrap();
        data.extend_from_slice(&bytes[at..at + size]);
        at += size + 2;
    }
    data
}

fuzz_target!(|input: Input<'_>| {
    let cuts: Vec<usize> = input.cuts.iter().map(|&c| usize::from(c)).collect();
    let whole = chunked_in_pieces(input.bytes, &[]);
    let pieces = chunked_in_pieces(input.bytes, &cuts);
    match (&whole, &pieces) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(ReadError::Framing(a)), Err(ReadError::Framing(b))) => assert_eq!(a, b),
        _ => panic!("whole {whole:?}, in pieces {pieces:?}"),
    }
    match chunked_whole(input.bytes) {
        Ok((end, true)) => {
            let decoded = whole.expect("the gate accepted it");
            assert!(decoded.done);
            assert_eq!(decoded.after, input.bytes.len() - end);
            assert_eq!(decoded.data, reference_data(input.bytes, end));
        }
        Ok((_, false)) => assert!(!whole.expect("not refused").done),
        Err(v) => match whole {
            Err(ReadError::Framing(got)) => assert_eq!(got, v),
            other => panic!("the gate refused with {v:?}, the server got {other:?}"),
        },
    }
});
