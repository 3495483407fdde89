//! The server's reading of client bytes for the fuzz targets (feature
//! `fuzzing`) and the unit tests; not built into levee otherwise: a
//! request built from a head the gate accepted (`gate_head`), and the
//! chunked request-body decoding fed bytes cut into pieces as a socket
//! delivers them (`client_chunked`).

use bytes::{Bytes, BytesMut};
use http::Request;

use super::{request, Decode, ReadError};
use crate::gate::Violation;

/// The request the server builds from `head`, a head the gate accepted
/// (its header map sized for no field: a hint, as the gate's count is).
pub fn request_of(head: &[u8]) -> Result<Request<()>, Violation> {
    let mut req = Request::new(());
    request::build(Bytes::copy_from_slice(head), 0, &mut req)?;
    Ok(req)
}

/// A chunked body's data as decoded, and whether it ended.
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded {
    pub data: Vec<u8>,
    pub done: bool,
    /// Bytes left after the body's end.
    pub after: usize,
}

/// Decodes `bytes` as a chunked body arriving in pieces cut at `cuts`
/// (each taken modulo the length, in any order).
pub fn chunked_in_pieces(bytes: &[u8], cuts: &[usize]) -> Result<Decoded, ReadError> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.push(bytes.len());
    cuts.sort_unstable();
    let mut decode = Decode::chunked();
    let mut buf = BytesMut::new();
    let mut data = Vec::new();
    let mut at = 0;
    for cut in cuts {
        buf.extend_from_slice(&bytes[at..cut.max(at)]);
        at = cut.max(at);
        while let Some(piece) = decode.next(&mut buf)? {
            data.extend_from_slice(&piece);
        }
        if decode.done() {
            break;
        }
    }
    Ok(Decoded {
        data,
        done: decode.done(),
        after: buf.len() + (bytes.len() - at),
    })
}
