//! Finding a byte in a head's short lines.
//!
//! A head line is a few dozen bytes (a Host line about 25), and every
//! request and response head is cut at each of its line ends, spaces and
//! colons: about 17 searches per proxied request. `memchr` pays for its
//! dispatch and vector setup on each call (about 45 instructions under
//! callgrind on a 20-byte line); eight bytes at a time in a register costs
//! less on such lines, and `memchr` still takes whatever lies past the
//! first 64 bytes.

/// How many leading bytes are searched a word at a time.
const SHORT: usize = 64;
const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Where `needle` first occurs in `hay`.
#[inline]
pub fn byte(needle: u8, hay: &[u8]) -> Option<usize> {
    let (short, long) = hay.split_at(hay.len().min(SHORT));
    match in_words(needle, short) {
        Some(i) => Some(i),
        None if long.is_empty() => None,
        None => memchr::memchr(needle, long).map(|i| SHORT + i),
    }
}

/// [`byte`] over at most [`SHORT`] bytes: a word's bytes equal to `needle`
/// become zero, and the lowest zero byte is the first match (the zero-byte
/// test can flag a byte above a true zero, never one below it).
#[inline]
fn in_words(needle: u8, hay: &[u8]) -> Option<usize> {
    let pattern = ONES * u64::from(needle);
    let (words, rest) = hay.as_chunks::<8>();
    for (i, word) in words.iter().enumerate() {
        let x = u64::from_le_bytes(*word) ^ pattern;
        let zeros = x.wrapping_sub(ONES) & !x & HIGHS;
        if zeros != 0 {
            return Some(i * 8 + (zeros.trailing_zeros() / 8) as usize);
        }
    }
    let done = words.len() * 8;
    rest.iter().position(|&b| b == needle).map(|i| done + i)
}

#[cfg(test)]
mod tests {
    use super::byte;
    use proptest::prelude::*;

    #[test]
    fn finds_the_first_match_at_every_offset_and_length() {
        for len in 0..150 {
            for at in 0..len {
                let mut hay = vec![b'a'; len];
                hay[at] = b'\n';
                if at + 3 < len {
                    hay[at + 3] = b'\n';
                }
                assert_eq!(byte(b'\n', &hay), Some(at), "len {len} at {at}");
            }
            assert_eq!(byte(b'\n', &vec![b'a'; len]), None, "len {len}");
        }
    }

    #[test]
    fn bytes_next_to_the_needle_do_not_match() {
        // 0x0a ^ 0x0b = 0x01 and 0x0a ^ 0x8a = 0x80: the zero-byte test's
        // borrow cases.
        let hay = [0x0b, 0x8a, 0x09, 0x0b, 0x8a, 0x0b, 0x09, 0x8b, 0x0b, 0x0a];
        assert_eq!(byte(b'\n', &hay), Some(9));
        assert_eq!(byte(0x00, &[0x01, 0x80, 0xff, 0x00]), Some(3));
        assert_eq!(byte(0xff, &[0xfe, 0x7f, 0xff]), Some(2));
    }

    proptest! {
        #[test]
        fn agrees_with_memchr(needle: u8, hay in proptest::collection::vec(any::<u8>(), 0..200)) {
            prop_assert_eq!(byte(needle, &hay), memchr::memchr(needle, &hay));
        }

        #[test]
        fn agrees_with_memchr_on_few_distinct_bytes(
            needle in 0u8..4,
            hay in proptest::collection::vec(0u8..4, 0..200),
        ) {
            prop_assert_eq!(byte(needle, &hay), memchr::memchr(needle, &hay));
        }
    }
}
