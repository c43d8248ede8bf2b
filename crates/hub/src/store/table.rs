//! The store's table: every key with its value and expiry, compact in memory.
//!
//! Each entry is one allocation holding the key, the optional expiry and the value side
//! by side (`u16 key length | u8 has expiry | key | u64 expiry? | value`), and the hash
//! table holds only a pointer and length per entry. One allocation per key instead of
//! three (key, value, node) is what keeps a small key-value pair near 130 bytes in all.

use hashbrown::hash_table::{Entry, HashTable};
use hashbrown::DefaultHashBuilder;
use std::hash::BuildHasher;

/// One key with its value, in one allocation.
pub(crate) struct Slot(Box<[u8]>);

const HEAD: usize = 3;

impl Slot {
    fn new(key: &[u8], value: &[u8], expires_at: Option<u64>) -> Slot {
        let exp = if expires_at.is_some() { 8 } else { 0 };
        let mut b = Vec::with_capacity(HEAD + key.len() + exp + value.len());
        b.extend_from_slice(&(key.len() as u16).to_le_bytes());
        b.push(u8::from(expires_at.is_some()));
        b.extend_from_slice(key);
        if let Some(t) = expires_at {
            b.extend_from_slice(&t.to_le_bytes());
        }
        b.extend_from_slice(value);
        Slot(b.into_boxed_slice())
    }

    fn klen(&self) -> usize {
        u16::from_le_bytes([self.0[0], self.0[1]]) as usize
    }

    /// The key.
    pub(crate) fn key(&self) -> &[u8] {
        &self.0[HEAD..HEAD + self.klen()]
    }

    /// When the entry expires, in milliseconds since the UNIX epoch.
    pub(crate) fn expires_at(&self) -> Option<u64> {
        if self.0[2] == 0 {
            return None;
        }
        let at = HEAD + self.klen();
        let mut t = [0u8; 8];
        t.copy_from_slice(&self.0[at..at + 8]);
        Some(u64::from_le_bytes(t))
    }

    /// The value (MessagePack).
    pub(crate) fn value(&self) -> &[u8] {
        let exp = if self.0[2] == 0 { 0 } else { 8 };
        &self.0[HEAD + self.klen() + exp..]
    }

    /// Replaces the expiry and the value of an entry that has room for exactly them:
    /// a value of the same length, and an expiry if and only if it had one.
    fn overwrite(&mut self, value: &[u8], expires_at: Option<u64>) {
        let at = HEAD + self.klen();
        let rest = &mut self.0[at..];
        match expires_at {
            Some(t) => {
                rest[..8].copy_from_slice(&t.to_le_bytes());
                rest[8..].copy_from_slice(value);
            }
            None => rest.copy_from_slice(value),
        }
    }

    /// Whether the entry has expired at `now`.
    pub(crate) fn expired(&self, now: u64) -> bool {
        self.expires_at().is_some_and(|t| t <= now)
    }
}

/// The table.
pub(crate) struct Table {
    map: HashTable<Slot>,
    hasher: DefaultHashBuilder,
}

impl Table {
    pub(crate) fn new() -> Table {
        Table {
            map: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
        }
    }

    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Looks `key` up and starts loading its entry's memory into the cache.
    pub(crate) fn prefetch(&self, key: &[u8]) {
        if let Some(s) = self.get_by_address(key) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a prefetch has no effect but on the cache; the pointer is valid.
            unsafe {
                std::arch::x86_64::_mm_prefetch(
                    s.as_ptr().cast::<i8>(),
                    std::arch::x86_64::_MM_HINT_T0,
                );
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = s;
        }
    }

    /// The entry whose key has `key`'s hash and length, by its address only (its memory
    /// is not read): a candidate for [`prefetch`](Table::prefetch).
    fn get_by_address(&self, key: &[u8]) -> Option<&[u8]> {
        let hash = self.hash(key);
        // The first entry with this hash's tag: reading the key would wait for its
        // memory, which is what the prefetch is for.
        self.map.find(hash, |_| true).map(|s| &s.0[..])
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<&Slot> {
        self.map.find(self.hash(key), |s| s.key() == key)
    }

    /// Stores a value; returns the previous entry's expiry and value length if there was
    /// one.
    pub(crate) fn insert(
        &mut self,
        key: &[u8],
        value: &[u8],
        expires_at: Option<u64>,
    ) -> Option<(Option<u64>, usize)> {
        let hash = self.hash(key);
        let hasher = &self.hasher;
        match self.map.entry(
            hash,
            |s| s.key() == key,
            |s: &Slot| hasher.hash_one(s.key()),
        ) {
            Entry::Occupied(mut e) => {
                let slot = e.get_mut();
                let old = (slot.expires_at(), slot.value().len());
                if old.1 == value.len() && old.0.is_some() == expires_at.is_some() {
                    // Same shape: overwrite in place, no allocation.
                    slot.overwrite(value, expires_at);
                } else {
                    *slot = Slot::new(key, value, expires_at);
                }
                Some(old)
            }
            Entry::Vacant(e) => {
                e.insert(Slot::new(key, value, expires_at));
                None
            }
        }
    }

    pub(crate) fn remove(&mut self, key: &[u8]) -> Option<Slot> {
        let hash = self.hash(key);
        match self.map.find_entry(hash, |s| s.key() == key) {
            Ok(e) => Some(e.remove().0),
            Err(_) => None,
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Slot> {
        self.map.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_keep_key_value_and_expiry() {
        let mut t = Table::new();
        assert_eq!(t.insert(b"a", b"1", None), None);
        assert_eq!(t.insert(b"a", b"22", Some(7)), Some((None, 1)));
        let s = t.get(b"a").unwrap();
        assert_eq!(
            (s.key(), s.value(), s.expires_at()),
            (&b"a"[..], &b"22"[..], Some(7))
        );
        assert!(s.expired(7) && !s.expired(6));
        // Same shape as before: written in place.
        assert_eq!(t.insert(b"a", b"33", Some(8)), Some((Some(7), 2)));
        assert_eq!(t.get(b"a").unwrap().value(), b"33");
        assert_eq!(t.get(b"a").unwrap().expires_at(), Some(8));
        assert_eq!(t.insert(b"a", b"44", None), Some((Some(8), 2)));
        assert_eq!(t.get(b"a").unwrap().expires_at(), None);
        assert_eq!(t.insert(b"a", b"55", None), Some((None, 2)));
        assert_eq!(t.get(b"a").unwrap().value(), b"55");
        assert_eq!(t.insert(b"b", b"", None), None);
        assert_eq!(t.len(), 2);
        assert_eq!(t.remove(b"a").unwrap().value(), b"55");
        assert!(t.get(b"a").is_none());
        assert_eq!(t.get(b"b").unwrap().value(), b"");
    }
}
