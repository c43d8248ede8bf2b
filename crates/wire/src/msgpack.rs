//! A structural check of MessagePack from a peer, before serde sees it.

/// Deepest nesting of MessagePack containers a control map may have. The maps this
/// version sends nest three deep (`channels` in Reply `channels`); an unknown key may hold
/// a little more.
pub const MAX_CONTROL_DEPTH: usize = 16;

/// Checks that `bytes` start with one well-formed MessagePack value, nested at most
/// [`MAX_CONTROL_DEPTH`] containers deep, whose every element is present.
///
/// Run before `rmp_serde` sees a control map, so that what the peer claims never costs
/// more than what it sent: serde buffers the values of an internally tagged enum,
/// reserving room for as many elements as a container claims (up to 1 MiB per
/// container), and recurses once per level.
pub(crate) fn check_msgpack(bytes: &[u8]) -> Result<(), &'static str> {
    const SHORT: &str = "MessagePack value runs past the frame";
    let mut pos = 0usize;
    // Values still to read at each open level; the first is the top-level value.
    let mut pending: Vec<u64> = vec![1];
    let be = |b: &[u8]| b.iter().fold(0u64, |n, &x| (n << 8) | u64::from(x));
    while let Some(top) = pending.last_mut() {
        if *top == 0 {
            pending.pop();
            continue;
        }
        *top -= 1;
        let marker = *bytes.get(pos).ok_or(SHORT)?;
        pos += 1;
        // (bytes of length field, fixed payload bytes, elements it contains)
        let (len_bytes, fixed, elements): (usize, usize, u64) = match marker {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0, 0),
            0x80..=0x8f => (0, 0, 2 * u64::from(marker & 0x0f)),
            0x90..=0x9f => (0, 0, u64::from(marker & 0x0f)),
            0xa0..=0xbf => (0, usize::from(marker & 0x1f), 0),
            0xc1 => return Err("MessagePack marker 0xc1 is never used"),
            0xc4 | 0xd9 => (1, 0, 0),
            0xc5 | 0xda => (2, 0, 0),
            0xc6 | 0xdb => (4, 0, 0),
            // ext 8/16/32: length, then a type byte and the data.
            0xc7 => (1, 1, 0),
            0xc8 => (2, 1, 0),
            0xc9 => (4, 1, 0),
            0xca => (0, 4, 0),
            0xcb => (0, 8, 0),
            0xcc | 0xd0 => (0, 1, 0),
            0xcd | 0xd1 => (0, 2, 0),
            0xce | 0xd2 => (0, 4, 0),
            0xcf | 0xd3 => (0, 8, 0),
            // fixext 1/2/4/8/16: a type byte and the data.
            0xd4 => (0, 2, 0),
            0xd5 => (0, 3, 0),
            0xd6 => (0, 5, 0),
            0xd7 => (0, 9, 0),
            0xd8 => (0, 17, 0),
            0xdc => (2, 0, 0),
            0xdd => (4, 0, 0),
            0xde => (2, 0, 0),
            0xdf => (4, 0, 0),
        };
        let field = bytes.get(pos..pos + len_bytes).ok_or(SHORT)?;
        pos += len_bytes;
        let n = be(field);
        let (data, elements) = match marker {
            0xdc | 0xdd => (0, n),
            0xde | 0xdf => (0, 2 * n),
            _ if len_bytes > 0 => (n, elements),
            _ => (0, elements),
        };
        let left = (bytes.len() - pos) as u64;
        if data + fixed as u64 > left {
            return Err(SHORT);
        }
        pos += (data as usize) + fixed;
        if elements > 0 {
            // Every element takes at least one byte.
            if elements > left {
                return Err(SHORT);
            }
            if pending.len() > MAX_CONTROL_DEPTH {
                return Err("MessagePack nested too deep");
            }
            pending.push(elements);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messagepack_nests_at_most_the_limit_and_holds_what_it_announces() {
        let nested = |depth: usize| {
            let mut v = vec![0x91u8; depth];
            v.push(0xc0);
            v
        };
        assert_eq!(check_msgpack(&nested(MAX_CONTROL_DEPTH)), Ok(()));
        assert!(check_msgpack(&nested(MAX_CONTROL_DEPTH + 1)).is_err());
        // Every kind of value, whole, in an array: accepted.
        let mut whole = vec![0xdc, 0, 35];
        whole.extend_from_slice(&[0x01, 0xff, 0xc0, 0xc2, 0xc3, 0xa1, b'a']);
        whole.extend_from_slice(&[0xc4, 1, 0, 0xc5, 0, 1, 0, 0xc6, 0, 0, 0, 1, 0]);
        whole.extend_from_slice(&[0xc7, 1, 5, 0, 0xc8, 0, 1, 5, 0, 0xc9, 0, 0, 0, 1, 5, 0]);
        whole.extend_from_slice(&[0xca, 0, 0, 0, 0, 0xcb, 0, 0, 0, 0, 0, 0, 0, 0]);
        whole.extend_from_slice(&[0xcc, 0, 0xcd, 0, 0, 0xce, 0, 0, 0, 0]);
        whole.extend_from_slice(&[0xcf, 0, 0, 0, 0, 0, 0, 0, 0, 0xd0, 0, 0xd1, 0, 0]);
        whole.extend_from_slice(&[0xd2, 0, 0, 0, 0, 0xd3, 0, 0, 0, 0, 0, 0, 0, 0]);
        whole.extend_from_slice(&[0xd4, 1, 0, 0xd5, 1, 0, 0, 0xd6, 1, 0, 0, 0, 0]);
        whole.extend_from_slice(&[0xd7, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0xd8, 1]);
        whole.extend_from_slice(&[0; 16]);
        whole.extend_from_slice(&[0xd9, 1, b'a', 0xda, 0, 1, b'a', 0xdb, 0, 0, 0, 1, b'a']);
        whole.extend_from_slice(&[0xdc, 0, 1, 0xc0, 0xdd, 0, 0, 0, 1, 0xc0]);
        whole.extend_from_slice(&[0xde, 0, 1, 0xc0, 0xc0, 0xdf, 0, 0, 0, 1, 0xc0, 0xc0]);
        whole.push(0xc0);
        assert_eq!(check_msgpack(&whole), Ok(()));
        // Cut anywhere, it announces more than it holds.
        for cut in 0..whole.len() {
            assert!(check_msgpack(&whole[..cut]).is_err(), "cut at {cut}");
        }
        assert!(check_msgpack(&[0xc1]).is_err());
    }
}
