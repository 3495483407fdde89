#![allow(clippy::unwrap_used, clippy::expect_used)]
use proptest::prelude::*;

use super::*;
use crate::gate::pieces::{chunked_in_pieces as scan_split, chunked_whole as scan_all};

/// A chunked encoding of `data` in chunks of `sizes`, with extensions and
/// trailers.
fn encode(data: &[u8], sizes: &[usize], ext: bool, trailers: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = data;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes
            .get(i)
            .copied()
            .unwrap_or(rest.len())
            .clamp(1, rest.len());
        i += 1;
        out.extend_from_slice(format!("{n:X}").as_bytes());
        if ext {
            out.extend_from_slice(b" ; a=b;c ;d = \"q\\\"x\"");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&rest[..n]);
        out.extend_from_slice(b"\r\n");
        rest = &rest[n..];
    }
    out.extend_from_slice(b"0\r\n");
    if trailers {
        out.extend_from_slice(b"x-sum: 1 2\r\nx-b:\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

#[test]
fn valid_bodies_end_where_they_end() {
    assert_eq!(scan_all(b"0\r\n\r\nGET"), Ok((5, true)));
    assert_eq!(scan_all(b"5\r\nhello\r\n0\r\n\r\n"), Ok((15, true)));
    assert_eq!(scan_all(b"000A\r\n0123456789\r\n0\r\n\r\n"), Ok((23, true)));
    assert_eq!(
        scan_all(b"5;name\r\nhello\r\n0;x=\"y\"\r\n\r\n"),
        Ok((26, true))
    );
    assert_eq!(scan_all(b"5\r\nhel"), Ok((6, false)));
    assert_eq!(scan_all(b"ffffffffffffffff\r\n"), Ok((18, false)));
}

#[test]
fn each_violation() {
    let cases: &[(&[u8], Violation)] = &[
        (b"\r\n", Violation::BadChunkSize),
        (b"g\r\n", Violation::BadChunkSize),
        (b"-1\r\n", Violation::BadChunkSize),
        (b"5\n", Violation::BadChunkSize),
        (b"0x5\r\n", Violation::BadChunkSize),
        (b"10000000000000000\r\n", Violation::ChunkSizeOverflow),
        (b"00000000000000001\r\n", Violation::ChunkSizeOverflow),
        (b"5;\r\n", Violation::BadChunkExtension),
        (b"5;=x\r\n", Violation::BadChunkExtension),
        (b"5;a=\r\n", Violation::BadChunkExtension),
        (b"5;a=\"x\r\n", Violation::BadChunkExtension),
        (b"5;a=b c\r\n", Violation::BadChunkExtension),
        (b"5 \r\n", Violation::BadChunkExtension),
        (b"5;a\n", Violation::BadChunkExtension),
        (b"5\rx", Violation::BareCr),
        (b"5\r\nhelloX\r\n", Violation::MissingChunkCrlf),
        (b"5\r\nhello\rX", Violation::MissingChunkCrlf),
        (b"5\r\nhello\n", Violation::MissingChunkCrlf),
        (b"0\r\nbad trailer\r\n\r\n", Violation::BadTrailer),
        (b"0\r\nx : 1\r\n\r\n", Violation::BadTrailer),
        (b"0\r\n folded\r\n\r\n", Violation::BadTrailer),
        (b"0\r\nx: \x00\r\n\r\n", Violation::BadTrailer),
        (b"0\r\nx: 1\n\r\n", Violation::BadTrailer),
        (b"0\r\n\rx", Violation::BareCr),
    ];
    for (bytes, want) in cases {
        assert_eq!(
            scan_all(bytes),
            Err(*want),
            "{}",
            String::from_utf8_lossy(bytes)
        );
    }
    let mut long_ext = b"1;".to_vec();
    long_ext.extend(std::iter::repeat_n(b'a', MAX_EXTENSION_BYTES));
    assert_eq!(scan_all(&long_ext), Err(Violation::ChunkExtensionsTooLong));
}

proptest! {
    /// Any valid chunked encoding of any data is accepted whole, wherever
    /// it is split, and nothing after it is taken.
    #[test]
    fn valid_encodings_round_trip(
        data in proptest::collection::vec(any::<u8>(), 0..300),
        sizes in proptest::collection::vec(1usize..50, 0..10),
        ext: bool,
        trailers: bool,
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut body = encode(&data, &sizes, ext, trailers);
        let len = body.len();
        body.extend_from_slice(b"GET / HTTP/1.1\r\n");
        prop_assert_eq!(scan_all(&body), Ok((len, true)));
        prop_assert_eq!(scan_split(&body, &cuts), Ok((len, true)));
    }

    /// Split points never change the verdict on arbitrary bytes either.
    #[test]
    fn split_points_do_not_change_the_verdict(
        data in proptest::collection::vec(any::<u8>(), 0..40),
        sizes in proptest::collection::vec(1usize..8, 0..4),
        noise in proptest::collection::vec(any::<u8>(), 1..4),
        at in any::<usize>(),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut body = encode(&data, &sizes, false, true);
        let at = at % (body.len() + 1);
        body.splice(at..at, noise);
        prop_assert_eq!(scan_all(&body), scan_split(&body, &cuts));
    }
}
