//! A node's response read from bytes cut into pieces, as a socket delivers
//! them: the head parser and the body decoder, driven as [`super::Conn`]
//! drives them. One harness for the unit tests and the fuzz targets
//! (feature `fuzzing`); it is not built into levee otherwise.

use bytes::BytesMut;
use http::{HeaderMap, Method};

pub use super::decode::Framing;
use super::decode::{parse_head, Decoded, Decoder};

/// What was read of a response.
#[derive(Debug, PartialEq, Eq)]
pub struct Read {
    pub status: u16,
    /// Bytes of the heads, interim ones included.
    pub head_len: usize,
    pub framing: Framing,
    pub keep_alive: bool,
    pub upgrade: bool,
    /// The body's data, in one piece.
    pub data: Vec<u8>,
    pub trailers: Option<HeaderMap>,
    /// Bytes taken by heads and body, once the body has ended.
    pub end: Option<usize>,
    /// The connection could carry another request: the body ended with
    /// nothing after it in all of the bytes (the pool drops a connection
    /// that has bytes waiting when it is checked out), on a connection the
    /// node keeps open.
    pub reusable: bool,
}

/// Where reading failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failed {
    Head,
    Body,
}

/// Reads a response to `method` from `bytes` arriving in pieces cut at
/// `cuts` (each taken modulo the length, in any order); `closed`: the node
/// closes the connection after the last byte. `Ok(None)`: no whole head.
pub fn response_in_pieces(
    bytes: &[u8],
    cuts: &[usize],
    method: &Method,
    closed: bool,
) -> Result<Option<Read>, Failed> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.push(bytes.len());
    cuts.sort_unstable();
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut read: Option<(Read, Decoder)> = None;
    for cut in cuts {
        buf.extend_from_slice(&bytes[fed..cut]);
        fed = cut;
        if read.is_none() {
            let Some(parsed) = parse_head(&mut buf, method).map_err(|_| Failed::Head)? else {
                continue;
            };
            // Every value the scanner let through is a valid `HeaderValue`:
            // a map built from the lines loses none of them.
            let lines = parsed.fields.all().count();
            assert_eq!(parsed.fields.into_map().len(), lines);
            let head_len = fed - buf.len();
            read = Some((
                Read {
                    status: parsed.response.status().as_u16(),
                    head_len,
                    framing: parsed.framing,
                    keep_alive: parsed.keep_alive,
                    upgrade: parsed.upgrade,
                    data: Vec::new(),
                    trailers: None,
                    end: parsed.upgrade.then_some(head_len),
                    reusable: false,
                },
                Decoder::new(parsed.framing),
            ));
        }
        let Some((read, decoder)) = &mut read else {
            continue;
        };
        if read.upgrade {
            break;
        }
        if body(read, decoder, &mut buf)? {
            read.end = Some(fed - buf.len());
            break;
        }
    }
    let Some((mut read, mut decoder)) = read else {
        return Ok(None);
    };
    if closed && read.end.is_none() {
        decoder.eof().map_err(|_| Failed::Body)?;
        read.end = Some(bytes.len());
        return Ok(Some(read));
    }
    read.reusable = read.keep_alive && read.end == Some(bytes.len());
    Ok(Some(read))
}

/// Decodes what `buf` holds of the body: whether it has ended.
fn body(read: &mut Read, decoder: &mut Decoder, buf: &mut BytesMut) -> Result<bool, Failed> {
    loop {
        match decoder.decode(buf).map_err(|_| Failed::Body)? {
            Decoded::Data(d) => read.data.extend_from_slice(&d),
            Decoded::Trailers(t) => read.trailers = Some(t),
            Decoded::End => return Ok(true),
            Decoded::More => return Ok(false),
        }
    }
}
