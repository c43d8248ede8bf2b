//! Encoding and decoding of message values, including channel handles inside them.
//!
//! A [`Channel`](crate::Channel) inside a message is written as the MessagePack
//! extension type [`CHANNEL_EXT_TYPE`] with five bytes: the channel number (`u32`, little
//! endian) and the end (`0` = A, `1` = B). While a value is encoded, the ends it contains
//! are collected so that the frame can list them for the hub; while a value is decoded,
//! the receiving [`Node`] is at hand so that a decoded handle joins it.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeOwned, Deserializer, SeqAccess, Visitor};
use serde::ser::{self, Serialize, Serializer};
use yukicomm_wire::{ChanId, End, EndRef, CHANNEL_EXT_TYPE};

use crate::node::Node;

thread_local! {
    static ENCODING: RefCell<Option<Vec<EndRef>>> = const { RefCell::new(None) };
    static DECODING: RefCell<Option<Node>> = const { RefCell::new(None) };
}

/// Encodes `value` at the end of `buf`; returns the channel ends it contains.
pub(crate) fn encode<T: Serialize + ?Sized>(
    buf: &mut Vec<u8>,
    value: &T,
) -> Result<Vec<EndRef>, String> {
    let outer = ENCODING.with(|e| e.borrow_mut().replace(Vec::new()));
    let result = rmp_serde::encode::write_named(buf, value);
    let carried = ENCODING.with(|e| std::mem::replace(&mut *e.borrow_mut(), outer));
    result.map_err(|e| e.to_string())?;
    Ok(carried.unwrap_or_default())
}

/// Decodes a `T` from `body`, binding any channel handles in it to `node`.
pub(crate) fn decode<T: DeserializeOwned>(node: &Node, body: &[u8]) -> Result<T, String> {
    let outer = DECODING.with(|d| d.borrow_mut().replace(node.clone()));
    let result = rmp_serde::from_slice::<T>(body);
    DECODING.with(|d| *d.borrow_mut() = outer);
    result.map_err(|e| e.to_string())
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
    let node = DECODING.with(|d| d.borrow().clone()).ok_or_else(|| {
        de::Error::custom("a Channel can only be decoded by receiving it on a yukicomm channel")
    })?;
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
