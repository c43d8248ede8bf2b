//! Operations on the store beyond [`Op`](yukicomm_wire::store::Op), for the RESP
//! endpoint: absolute expiries, reading an entry with its expiry, cursors over the
//! keys, flushing, the counts `PUBSUB` reports, and subscriptions without credit.
//!
//! Each is applied under the store's lock like an `Op`, journaled and announced to
//! watchers like one, and counted in the store's operations.

use rustc_hash::FxHasher;
use std::hash::Hasher;

use super::journal::RecordRef;
use super::{err, is_glob, Answer, Deliver, Matcher, Store, SubKind};
use crate::router::ConnId;
use yukicomm_wire::ErrorCode;

/// A position in a [`Store::scan`]: keys are visited in the order of a fixed hash.
fn scan_position(key: &[u8]) -> u64 {
    let mut h = FxHasher::default();
    h.write(key);
    // 1..=2^63: 0 is the cursor that starts and ends a scan.
    (h.finish() >> 1) + 1
}

/// A live entry: its value and when it expires.
pub(crate) type Entry<'a> = (&'a [u8], Option<u64>);

impl Store {
    /// Now, by the store's clock.
    pub(crate) fn now_ms(&self) -> u64 {
        self.config.clock.now_ms()
    }

    /// Counts one operation (for reports) that was applied through these methods.
    pub(crate) fn count_op(&mut self) {
        self.counts.ops += 1;
    }

    /// The live value at `key` and its expiry.
    pub(crate) fn entry(
        &mut self,
        key: &[u8],
        out: &mut dyn Deliver,
    ) -> Result<Option<Entry<'_>>, Answer<'static>> {
        self.check_key(key, "key")?;
        let now = self.now_ms();
        Ok(self
            .live(key, now, out)
            .map(|s| (s.value(), s.expires_at())))
    }

    /// Stores `value` at `key`, to expire at `at` (milliseconds since the epoch).
    pub(crate) fn set_at(
        &mut self,
        key: &[u8],
        value: &[u8],
        at: Option<u64>,
        out: &mut dyn Deliver,
    ) -> Result<(), Answer<'static>> {
        self.check_key(key, "key")?;
        self.check_value(key, value)?;
        self.write(key, value, at, out)
    }

    /// Deletes `key`: whether it existed.
    pub(crate) fn remove(
        &mut self,
        key: &[u8],
        out: &mut dyn Deliver,
    ) -> Result<bool, Answer<'static>> {
        self.check_key(key, "key")?;
        let now = self.now_ms();
        if self.live(key, now, out).is_none() {
            return Ok(false);
        }
        self.erase(key, out)?;
        Ok(true)
    }

    /// Sets when `key` expires (`None`: never); a time already past deletes it, as
    /// Redis does. Whether the key exists.
    pub(crate) fn expire_at(
        &mut self,
        key: &[u8],
        at: Option<u64>,
        out: &mut dyn Deliver,
    ) -> Result<bool, Answer<'static>> {
        self.check_key(key, "key")?;
        let now = self.now_ms();
        let Some(s) = self.live(key, now, out) else {
            return Ok(false);
        };
        if at.is_some_and(|t| t <= now) {
            self.erase(key, out)?;
            return Ok(true);
        }
        let value = s.value().to_vec();
        self.journal(RecordRef::Expire {
            key,
            expires_at_ms: at,
        })?;
        self.put(key, &value, at);
        Ok(true)
    }

    /// Live keys and the live keys with an expiry.
    pub(crate) fn key_counts(&self) -> (usize, usize) {
        let now = self.now_ms();
        let expired = self.expiries.range(..(now + 1, Box::from(&[][..]))).count();
        (
            self.table.len().saturating_sub(expired),
            self.expiries.len().saturating_sub(expired),
        )
    }

    /// One page of a scan: up to `count` live keys matching `pattern`, from `cursor`
    /// on, and the cursor to continue from (0 when done). Each key that stays live
    /// through the whole scan is returned exactly once (a key's place is a fixed hash;
    /// keys with equal hashes go out in the same page). Each page looks at every key.
    pub(crate) fn scan(
        &self,
        cursor: u64,
        count: usize,
        pattern: Option<&[u8]>,
    ) -> (u64, Vec<Vec<u8>>) {
        let now = self.now_ms();
        let m = pattern.map(Matcher::new);
        let mut page: Vec<(u64, &[u8])> = self
            .table
            .iter()
            .filter(|s| !s.expired(now))
            .map(|s| (scan_position(s.key()), s.key()))
            .filter(|&(p, k)| p >= cursor && m.as_ref().is_none_or(|m| m.matches(k)))
            .collect();
        let count = count.max(1);
        if page.len() > count {
            page.select_nth_unstable_by_key(count, |e| e.0);
            // Keys that share the boundary's position go together in the next page; if
            // the whole page shares one position, it goes out now, whole.
            let mut next = page[count].0;
            if page.iter().any(|e| e.0 < next) {
                page.retain(|e| e.0 < next);
            } else {
                page.retain(|e| e.0 == next);
                next += 1;
            }
            return (next, page.into_iter().map(|(_, k)| k.to_vec()).collect());
        }
        (0, page.into_iter().map(|(_, k)| k.to_vec()).collect())
    }

    /// Deletes every key (journaled; watchers hear each deletion).
    pub(crate) fn flush(&mut self, out: &mut dyn Deliver) -> Result<(), Answer<'static>> {
        let keys: Vec<Box<[u8]>> = self.table.iter().map(|s| Box::from(s.key())).collect();
        for k in keys {
            self.erase(&k, out)?;
        }
        Ok(())
    }

    /// Topics with at least one exact subscriber (any process), matching `pattern`.
    pub(crate) fn channels(&self, pattern: Option<&[u8]>) -> Vec<Vec<u8>> {
        let m = pattern.map(Matcher::new);
        let mut v: Vec<Vec<u8>> = self
            .topics
            .iter()
            .filter(|(t, subs)| {
                subs.iter()
                    .any(|k| self.subs.get(k).is_some_and(|s| !s.declared_pattern))
                    && m.as_ref().is_none_or(|m| m.matches(t))
            })
            .map(|(t, _)| t.to_vec())
            .collect();
        v.sort_unstable();
        v
    }

    /// Exact subscriptions to `topic` (any process).
    pub(crate) fn numsub(&self, topic: &[u8]) -> usize {
        self.topics.get(topic).map_or(0, |subs| {
            subs.iter()
                .filter(|k| self.subs.get(k).is_some_and(|s| !s.declared_pattern))
                .count()
        })
    }

    /// Distinct patterns subscribed to (any process).
    pub(crate) fn numpat(&self) -> usize {
        let mut p: Vec<&[u8]> = self
            .subs
            .values()
            .filter(|s| s.kind == SubKind::Topic && (s.declared_pattern || is_glob(&s.pattern)))
            .map(|s| &s.pattern[..])
            .collect();
        p.sort_unstable();
        p.dedup();
        p.len()
    }

    /// Subscribes `conn`'s subscription `sub` to a topic or pattern, without credit
    /// (see `Sub::metered`).
    pub(crate) fn subscribe_unmetered(
        &mut self,
        conn: ConnId,
        sub: u32,
        pattern: &[u8],
        declared_pattern: bool,
    ) -> Result<(), Answer<'static>> {
        self.check_key(pattern, "channel")?;
        self.add_sub(conn, sub, u32::MAX, SubKind::Topic, pattern)?;
        if let Some(s) = self.subs.get_mut(&(conn, sub)) {
            s.metered = false;
            s.declared_pattern = declared_pattern;
        }
        Ok(())
    }

    /// Ends a subscription.
    pub(crate) fn unsubscribe(&mut self, conn: ConnId, sub: u32) {
        self.remove_sub((conn, sub));
    }

    /// Appends a value to the string at `key`: the new length in bytes, or an error.
    /// `read` and `write` convert between stored values and plain bytes.
    pub(crate) fn append(
        &mut self,
        key: &[u8],
        tail: &[u8],
        read: impl Fn(&[u8]) -> Vec<u8>,
        write: impl Fn(&[u8]) -> Vec<u8>,
        out: &mut dyn Deliver,
    ) -> Result<usize, Answer<'static>> {
        let (mut plain, at) = match self.entry(key, out)? {
            Some((v, at)) => (read(v), at),
            None => (Vec::new(), None),
        };
        plain.extend_from_slice(tail);
        if plain.len() > self.config.max_value {
            return Err(err(
                ErrorCode::TooLarge,
                format!(
                    "the value would exceed the limit of {} bytes",
                    self.config.max_value
                ),
            ));
        }
        let value = write(&plain);
        self.set_at(key, &value, at, out)?;
        Ok(plain.len())
    }
}

impl Store {
    /// Checks a key and a value as a write would, writing nothing: lets a command that
    /// writes several keys (`MSET`) refuse them all before writing any.
    pub(crate) fn check_write(&self, key: &[u8], value: &[u8]) -> Result<(), Answer<'static>> {
        self.check_key(key, "key")?;
        self.check_value(key, value)
    }

    /// Checks a key as an operation would.
    pub(crate) fn check_any_key(&self, key: &[u8]) -> Result<(), Answer<'static>> {
        self.check_key(key, "key")
    }
}
