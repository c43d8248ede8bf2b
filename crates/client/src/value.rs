//! Encoding and decoding of message values, including channel handles inside them.
//!
//! A [`Channel`](crate::Channel) inside a message is written as the MessagePack
//! extension type [`CHANNEL_EXT_TYPE`] with five bytes: the channel number (`u32`, little
//! endian) and the end (`0` = A, `1` = B). While a value is encoded, the ends it contains
//! are collected so that the frame can list them for the hub; while a value is decoded,
//! the receiving [`Node`] is at hand so that a decoded handle joins it.

use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::de::{self, DeserializeOwned, Deserializer, SeqAccess, Visitor};
use serde::ser::{self, Serialize, Serializer};
use yukicomm_wire::{ChanId, End, EndRef, CHANNEL_EXT_TYPE};

use crate::node::{Node, NodeInner};

thread_local! {
    static ENCODING: RefCell<Option<Vec<EndRef>>> = const { RefCell::new(None) };
}

// While a message is decoded: the node receiving it, and its body (which received
// payloads share instead of copying).
scoped_tls::scoped_thread_local!(static DECODING_NODE: Arc<NodeInner>);
scoped_tls::scoped_thread_local!(static DECODING_BODY: Bytes);

/// Encodes `value` at the end of `buf`; returns the channel ends it contains.
pub(crate) fn encode<T: Serialize + ?Sized>(
    buf: &mut Vec<u8>,
    value: &T,
) -> Result<Vec<EndRef>, String> {
    let start = buf.len();
    let outer = ENCODING.with(|e| e.borrow_mut().replace(Vec::new()));
    // The value's `Serialize` is user code: a panic in it must leave `buf` as it was
    // (it may be a connection's write buffer) and reach the sender as an error.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rmp_serde::encode::write_named(buf, value)
    }));
    let carried = ENCODING.with(|e| std::mem::replace(&mut *e.borrow_mut(), outer));
    let failure = match result {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(panic) => Some(format!(
            "its Serialize panicked: {}",
            panic_message(&*panic)
        )),
    };
    if let Some(reason) = failure {
        buf.truncate(start);
        return Err(reason);
    }
    let carried = carried.unwrap_or_default();
    if carried.len() > u16::MAX as usize {
        return Err(format!(
            "a message can carry at most {} channels, not {}",
            u16::MAX,
            carried.len()
        ));
    }
    Ok(carried)
}

/// The text of a caught panic.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "(no message)"
    }
}

/// Decodes a `T` from `body`, binding any channel handles in it to `node`.
pub(crate) fn decode<T: DeserializeOwned>(
    node: &Arc<NodeInner>,
    body: &Bytes,
) -> Result<T, String> {
    DECODING_NODE
        .set(node, || {
            DECODING_BODY.set(body, || rmp_serde::from_slice::<T>(body))
        })
        .map_err(|e| e.to_string())
}

/// Serializes a channel end as the extension type; called by `Channel`'s `Serialize`.
pub(crate) fn serialize_end<S: Serializer>(key: EndRef, s: S) -> Result<S::Ok, S::Error> {
    let collected = ENCODING.with(|e| match e.borrow_mut().as_mut() {
        Some(v) => {
            v.push(key);
            true
        }
        None => false,
    });
    if !collected {
        return Err(ser::Error::custom(
            "a Channel can only be encoded by sending it on a yukicomm channel",
        ));
    }
    let mut raw = [0u8; 5];
    raw[..4].copy_from_slice(&key.chan.0.to_le_bytes());
    raw[4] = key.end as u8;
    s.serialize_newtype_struct(
        rmp_serde::MSGPACK_EXT_STRUCT_NAME,
        &(CHANNEL_EXT_TYPE, RawBytes(&raw)),
    )
}

/// Deserializes a channel end; returns the node decoding it as well.
pub(crate) fn deserialize_end<'de, D: Deserializer<'de>>(d: D) -> Result<(Node, EndRef), D::Error> {
    let (tag, raw) =
        d.deserialize_newtype_struct(rmp_serde::MSGPACK_EXT_STRUCT_NAME, ExtVisitor)?;
    if tag != CHANNEL_EXT_TYPE || raw.len() != 5 {
        return Err(de::Error::custom(format!(
            "expected a channel (extension type {CHANNEL_EXT_TYPE}, 5 bytes), found extension type {tag} with {} bytes",
            raw.len()
        )));
    }
    let chan = ChanId(u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]));
    let end = End::from_u8(raw[4]).ok_or_else(|| de::Error::custom("bad channel end"))?;
    if !DECODING_NODE.is_set() {
        return Err(de::Error::custom(
            "a Channel can only be decoded by receiving it on a yukicomm channel",
        ));
    }
    let node = DECODING_NODE.with(|n| Node { inner: n.clone() });
    Ok((node, EndRef { chan, end }))
}

struct RawBytes<'a>(&'a [u8]);

impl Serialize for RawBytes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

struct ExtVisitor;

impl<'de> Visitor<'de> for ExtVisitor {
    type Value = (i8, Vec<u8>);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a MessagePack extension")
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_tuple(2, self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let tag: i8 = seq
            .next_element()?
            .ok_or_else(|| de::Error::custom("missing extension tag"))?;
        let data: ByteVec = seq
            .next_element()?
            .ok_or_else(|| de::Error::custom("missing extension data"))?;
        Ok((tag, data.0))
    }
}

struct ByteVec(Vec<u8>);

impl<'de> de::Deserialize<'de> for ByteVec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ByteVec, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ByteVec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<ByteVec, E> {
                Ok(ByteVec(v.to_vec()))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// Binary data that travels as MessagePack `bin` and is received without a copy: the
/// [`Bytes`] it holds is a slice of the received message. Prefer it to `Vec<u8>` (an array
/// of integers in MessagePack) and to `bytes::Bytes` (copied out on receipt) for large
/// payloads. A received `Payload` keeps the buffer it was read into alive: copy a small
/// one that you keep for long.
///
/// # Examples
///
/// ```
/// use yukicomm_client::Payload;
/// let p = Payload::from(vec![1u8, 2, 3]);
/// assert_eq!(&p[..], &[1, 2, 3]);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Payload(pub Bytes);

impl Payload {
    /// The bytes.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl std::ops::Deref for Payload {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl From<Bytes> for Payload {
    fn from(b: Bytes) -> Payload {
        Payload(b)
    }
}

impl From<Vec<u8>> for Payload {
    fn from(v: Vec<u8>) -> Payload {
        Payload(Bytes::from(v))
    }
}

impl From<&'static [u8]> for Payload {
    fn from(s: &'static [u8]) -> Payload {
        Payload(Bytes::from_static(s))
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> de::Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Payload, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Payload;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("binary data")
            }
            fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Payload, E> {
                // Inside a message being received: share its buffer instead of copying.
                let shared = DECODING_BODY.is_set().then(|| {
                    DECODING_BODY.with(|body| {
                        let start = body.as_ptr() as usize;
                        let at = v.as_ptr() as usize;
                        (at >= start && at + v.len() <= start + body.len())
                            .then(|| body.slice_ref(v))
                    })
                });
                Ok(Payload(
                    shared
                        .flatten()
                        .unwrap_or_else(|| Bytes::copy_from_slice(v)),
                ))
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Payload, E> {
                Ok(Payload(Bytes::copy_from_slice(v)))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Payload, E> {
                Ok(Payload(Bytes::from(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Payload, A::Error> {
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(b) = seq.next_element::<u8>()? {
                    v.push(b);
                }
                Ok(Payload(Bytes::from(v)))
            }
        }
        d.deserialize_bytes(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_received_payload_shares_the_message_buffer() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let node = crate::transport::Driver::new(
            8,
            1 << 20,
            rt.handle().clone(),
            std::time::Duration::from_secs(1),
        )
        .node();
        let mut body = Vec::new();
        let sent = Payload::from(vec![7u8; 1000]);
        assert!(encode(&mut body, &("tag", &sent)).unwrap().is_empty());
        let body = Bytes::from(body);
        let (tag, got): (String, Payload) = decode(&node.inner, &body).unwrap();
        assert_eq!(tag, "tag");
        assert_eq!(got, sent);
        let start = body.as_ptr() as usize;
        let at = got.as_ptr() as usize;
        assert!(
            at >= start && at + got.len() <= start + body.len(),
            "not copied"
        );
        // Outside a receive it is an ordinary copy.
        let plain: (String, Payload) = rmp_serde::from_slice(&body).unwrap();
        assert_eq!(plain.1, sent);
    }
}
