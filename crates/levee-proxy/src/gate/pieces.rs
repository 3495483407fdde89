//! The gate's scanners fed bytes cut into pieces, as a socket delivers
//! them: each verdict must not depend on where the cuts fall. One harness
//! for the unit tests and the fuzz targets (feature `fuzzing`); it is not
//! built into levee otherwise.

use super::{ChunkedScan, Head, HeadScan, Limits, Violation};

/// Bytes a chunked body took, and whether it ended; or the violation.
pub type ChunkedVerdict = Result<(usize, bool), Violation>;

/// The chunked verdict on `bytes` fed in one piece.
pub fn chunked_whole(bytes: &[u8]) -> ChunkedVerdict {
    let mut scan = ChunkedScan::default();
    match scan.scan(bytes) {
        (_, Some(v)) => Err(v),
        (n, None) => Ok((n, scan.is_done())),
    }
}

/// The chunked verdict on `bytes` fed in pieces cut at `cuts` (each taken
/// modulo the length, in any order; an empty piece is fed too).
pub fn chunked_in_pieces(bytes: &[u8], cuts: &[usize]) -> ChunkedVerdict {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.push(bytes.len());
    cuts.sort_unstable();
    let mut scan = ChunkedScan::default();
    let mut at = 0;
    for cut in cuts {
        if cut < at {
            continue;
        }
        match scan.scan(&bytes[at..cut]) {
            (_, Some(v)) => return Err(v),
            (n, None) => at += n,
        }
        if scan.is_done() {
            break;
        }
    }
    Ok((at, scan.is_done()))
}

/// The head verdict when the bytes so far grow to each cut in turn (cuts
/// as for [`chunked_in_pieces`]), then to all of `bytes`.
pub fn head_in_pieces(
    bytes: &[u8],
    cuts: &[usize],
    limits: &Limits,
) -> Result<Option<Head>, Violation> {
    let mut scan = HeadScan::default();
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    for cut in cuts {
        if let Some(head) = scan.scan(&bytes[..cut], limits)? {
            return Ok(Some(head));
        }
    }
    scan.scan(bytes, limits)
}
