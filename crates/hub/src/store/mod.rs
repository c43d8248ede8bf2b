//! The shared store: a key-value table with expiry, publish/subscribe and watches, held
//! by the hub in the main process.
//!
//! Every process reaches it through the same operations ([`Op`]): a child over its hub
//! connection, the main process by direct calls. All of it sits behind one mutex, held
//! for one batch of operations at a time, so the store is linearizable: an operation
//! that returned is seen by every operation that starts after it, from any process.
//!
//! - **Values** are MessagePack bytes as the client encoded them; the store reads them
//!   only to add to an integer ([`Op::Incr`]).
//! - **Expiry**: a key with a time to live disappears at its deadline: reads check it,
//!   and a sweep every 100 ms removes what nobody read (and tells watchers). Time comes
//!   from a [`Clock`], which tests can drive by hand.
//! - **Publish/subscribe and watches** are *subscriptions*: each has a credit, the
//!   number of deliveries its process can still take (at most
//!   [`StoreConfig::subscription_buffer`]), which the process returns as it consumes
//!   them; and the bytes of the deliveries it has not returned credit for, which may
//!   pass [`StoreConfig::subscription_buffer_bytes`] by one delivery at most. A
//!   delivery to a subscription without credit, or already at that many bytes, is
//!   dropped and counted; the
//!   count is sent to the subscriber as soon as it returns credit (it has room again),
//!   ahead of any later delivery. A slow subscriber misses messages, it never makes
//!   the hub's memory grow.
//! - **Durability**, optional: with a journal file every write is appended to it before
//!   it is acknowledged (the `journal` module describes its format).

mod direct;
pub(crate) mod journal;
mod stats;
mod table;

pub(crate) use stats::per_second;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use rustc_hash::FxHashMap;
use wildmatch::WildMatch;
use yukicomm_wire::store::{
    encode_change, encode_delivery, encode_publication, ChangeKind, Delivery, Op, OpReply,
};
use yukicomm_wire::{ErrorCode, Frame};

pub use journal::Fsync;
use journal::{Journal, Record, RecordRef};
use table::Table;

use crate::router::{ConnId, LOCAL};

/// Settings of the shared store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Longest key, topic or pattern, in bytes. Default 1024; at most 65,535.
    pub max_key: usize,
    /// Largest value or published message, in bytes (as MessagePack). Default 1 MiB.
    pub max_value: usize,
    /// The journal file; `None` (the default) keeps the store in memory only.
    pub journal: Option<PathBuf>,
    /// When the journal is synced to disk. Default: every second.
    pub fsync: Fsync,
    /// Most deliveries a subscription or watch may have waiting for its process; beyond
    /// that they are dropped and counted. Default 1024.
    pub subscription_buffer: u32,
    /// Most bytes (topic and message, or key and value) of the deliveries a
    /// subscription or watch may have waiting for its process: a delivery is dropped
    /// and counted when this many or more wait already, so one delivery may pass it.
    /// Default 8 MiB.
    pub subscription_buffer_bytes: u64,
    /// Most subscriptions and watches one process may have. Default 10,000.
    pub max_subscriptions: usize,
    /// Where the store's time comes from. Default: the system clock.
    pub clock: Clock,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            max_key: 1024,
            max_value: 1 << 20,
            journal: None,
            fsync: Fsync::EverySecond,
            subscription_buffer: 1024,
            subscription_buffer_bytes: 8 << 20,
            max_subscriptions: 10_000,
            clock: Clock::System,
        }
    }
}

/// The store's source of time, in milliseconds since the UNIX epoch.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// The system clock.
    #[default]
    System,
    /// A clock that moves only when told to (for tests).
    Manual(ManualClock),
}

impl Clock {
    /// Now, in milliseconds since the UNIX epoch.
    pub fn now_ms(&self) -> u64 {
        match self {
            Clock::System => system_ms(),
            Clock::Manual(m) => m.now_ms(),
        }
    }
}

fn system_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A clock that starts at the system time and then moves only by
/// [`advance`](ManualClock::advance). Clones share the time.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicU64>);

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock::new()
    }
}

impl ManualClock {
    /// A clock set to the current system time.
    pub fn new() -> ManualClock {
        ManualClock(Arc::new(AtomicU64::new(system_ms())))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: std::time::Duration) {
        self.0.fetch_add(by.as_millis() as u64, Ordering::AcqRel);
    }

    /// Now, in milliseconds since the UNIX epoch.
    pub fn now_ms(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// Where the store sends what it produces for processes other than the requester.
pub(crate) trait Deliver {
    /// Appends an encoded frame for a child's connection.
    fn encoded(&mut self, conn: ConnId, encode: &mut dyn FnMut(&mut Vec<u8>));
    /// A frame for the main process.
    fn local(&mut self, frame: Frame);
    /// A published message for subscription `sub` of connection `conn` (not the main
    /// process). By default encoded as a Delivery frame; an endpoint that speaks
    /// another protocol (RESP) receives it as it is.
    fn publication(&mut self, conn: ConnId, sub: u32, topic: &[u8], body: &[u8]) {
        self.encoded(conn, &mut |buf| encode_publication(buf, sub, topic, body));
    }
}

/// A connection that takes its publications itself, in a protocol of its own (the RESP
/// endpoint's): registered with the hub's core, called under the store's lock, so it
/// must only append to a bounded buffer (no user code, no waiting).
pub(crate) trait Subscriber: Send + Sync {
    /// A message published to `topic`, for this connection's subscription `sub`.
    fn publication(&self, sub: u32, topic: &[u8], body: &[u8]);
}

/// The answer to one operation, borrowing the stored value.
pub(crate) enum Answer<'a> {
    Done,
    Value(&'a [u8]),
    Nil,
    Int(i64),
    Bool(bool),
    Keys(Vec<String>),
    Entries(Vec<(String, Bytes)>),
    Error(ErrorCode, String),
}

impl Answer<'_> {
    pub(crate) fn is_error(&self) -> bool {
        matches!(self, Answer::Error(..))
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>, id: u32) {
        use yukicomm_wire::store as w;
        match self {
            Answer::Value(v) => w::encode_op_value(out, id, v),
            Answer::Int(n) => w::encode_op_int(out, id, *n),
            Answer::Bool(b) => w::encode_op_bool(out, id, *b),
            other => w::encode_op_reply(out, id, &other.to_owned_reply()),
        }
    }

    pub(crate) fn to_owned_reply(&self) -> OpReply {
        match self {
            Answer::Done => OpReply::Done,
            Answer::Value(v) => OpReply::Value(Bytes::copy_from_slice(v)),
            Answer::Nil => OpReply::Nil,
            Answer::Int(n) => OpReply::Int(*n),
            Answer::Bool(b) => OpReply::Bool(*b),
            Answer::Keys(k) => OpReply::Keys(k.clone()),
            Answer::Entries(e) => OpReply::Entries(e.clone()),
            Answer::Error(code, message) => OpReply::Error {
                code: *code,
                message: message.clone(),
            },
        }
    }
}

type SubKey = (ConnId, u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SubKind {
    Topic,
    WatchKey,
    WatchPrefix,
}

struct Sub {
    kind: SubKind,
    pattern: Box<[u8]>,
    /// Deliveries its process can still take.
    credit: u32,
    /// The sizes of the deliveries sent and not credited back, oldest first (the
    /// process consumes them in order); at most `subscription_buffer` of them.
    sizes: std::collections::VecDeque<u32>,
    /// Their sum.
    bytes: u64,
    /// Deliveries dropped since the last one that got through.
    missed: u64,
    /// Deliveries dropped in all (for reports).
    missed_total: u64,
    /// Whether credit applies. A RESP subscription has none: its connection bounds
    /// its output buffer itself and is closed when that is full.
    metered: bool,
    /// A RESP pattern subscription (`PSUBSCRIBE`), even without glob characters: not
    /// counted as a subscriber of the channel it names.
    declared_pattern: bool,
}

/// Whether a topic pattern has glob characters.
fn is_glob(p: &[u8]) -> bool {
    p.iter().any(|&b| b == b'*' || b == b'?')
}

/// The store.
pub(crate) struct Store {
    config: StoreConfig,
    table: Table,
    /// Keys with an expiry, by deadline.
    expiries: BTreeSet<(u64, Box<[u8]>)>,
    subs: FxHashMap<SubKey, Sub>,
    /// Subscriptions to one exact topic.
    topics: FxHashMap<Box<[u8]>, Vec<SubKey>>,
    /// Subscriptions to a topic pattern, with the compiled pattern.
    topic_globs: Vec<(SubKey, WildMatch)>,
    /// Watches of one key.
    watched_keys: FxHashMap<Box<[u8]>, Vec<SubKey>>,
    /// Watches of a prefix.
    watched_prefixes: Vec<SubKey>,
    per_conn: FxHashMap<ConnId, usize>,
    journal: Option<Journal>,
    /// The journal failed: writes are refused from then on.
    journal_failed: bool,
    /// Bytes of keys and values stored, to decide when to compact the journal.
    live_bytes: usize,
    /// Operations and publications counted for reports.
    counts: stats::Counts,
}

/// Journals smaller than this are never compacted while running.
const COMPACT_MIN: u64 = 64 << 20;

fn err(code: ErrorCode, message: impl Into<String>) -> Answer<'static> {
    Answer::Error(code, message.into())
}

fn show(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

impl Store {
    /// Makes the store, replaying its journal if it has one.
    pub(crate) fn open(config: StoreConfig) -> std::io::Result<Store> {
        let mut store = Store {
            table: Table::new(),
            expiries: BTreeSet::new(),
            subs: FxHashMap::default(),
            topics: FxHashMap::default(),
            topic_globs: Vec::new(),
            watched_keys: FxHashMap::default(),
            watched_prefixes: Vec::new(),
            per_conn: FxHashMap::default(),
            journal: None,
            journal_failed: false,
            live_bytes: 0,
            counts: stats::Counts::default(),
            config,
        };
        if let Some(path) = store.config.journal.clone() {
            let (mut journal, records) = Journal::open(&path, store.config.fsync)?;
            let n = records.len();
            for r in records {
                match r {
                    Record::Set {
                        key,
                        value,
                        expires_at_ms,
                    } => store.put(&key, &value, expires_at_ms),
                    Record::Delete { key } => {
                        store.take(&key);
                    }
                    Record::Expire { key, expires_at_ms } => {
                        if let Some(s) = store.table.get(&key) {
                            let value = s.value().to_vec();
                            store.put(&key, &value, expires_at_ms);
                        }
                    }
                }
            }
            let now = store.config.clock.now_ms();
            store.sweep_silently(now);
            // Start from a journal holding exactly what is live.
            journal.compact(store.live_records())?;
            tracing::info!(
                journal = %path.display(),
                records = n,
                keys = store.table.len(),
                "store restored from its journal"
            );
            store.journal = Some(journal);
        }
        Ok(store)
    }

    fn live_records(&self) -> impl Iterator<Item = RecordRef<'_>> {
        self.table.iter().map(|s| RecordRef::Set {
            key: s.key(),
            value: s.value(),
            expires_at_ms: s.expires_at(),
        })
    }

    /// Stores without journal or notification.
    fn put(&mut self, key: &[u8], value: &[u8], expires_at: Option<u64>) {
        match self.table.insert(key, value, expires_at) {
            Some((old_exp, old_len)) => {
                if let Some(t) = old_exp {
                    self.expiries.remove(&(t, Box::from(key)));
                }
                self.live_bytes = self.live_bytes.saturating_sub(old_len) + value.len();
            }
            None => self.live_bytes += key.len() + value.len(),
        }
        if let Some(t) = expires_at {
            self.expiries.insert((t, Box::from(key)));
        }
    }

    /// Removes without journal or notification.
    fn take(&mut self, key: &[u8]) -> Option<table::Slot> {
        let slot = self.table.remove(key)?;
        if let Some(t) = slot.expires_at() {
            self.expiries.remove(&(t, Box::from(key)));
        }
        self.live_bytes = self
            .live_bytes
            .saturating_sub(slot.key().len() + slot.value().len());
        Some(slot)
    }

    /// Removes what expired by `now`, telling no one (at start-up).
    fn sweep_silently(&mut self, now: u64) {
        while let Some((t, key)) = self.expiries.first().cloned() {
            if t > now {
                break;
            }
            self.take(&key);
        }
    }

    /// Removes what expired by `now` and tells the watchers; called periodically.
    pub(crate) fn sweep(&mut self, out: &mut dyn Deliver) {
        let now = self.config.clock.now_ms();
        while let Some((t, key)) = self.expiries.first().cloned() {
            if t > now {
                break;
            }
            self.take(&key);
            self.notify(&key, ChangeKind::Expired, &[], out);
        }
        if let Some(j) = &mut self.journal {
            if let Err(e) = j.sync_if_due() {
                tracing::error!("cannot sync the store's journal: {e}");
            }
        }
    }

    /// Starts loading the entry at `key` into the cache, for an access soon after:
    /// a pipeline's keys are looked up in turn with their memory already on its way.
    pub(crate) fn prefetch(&self, key: &[u8]) {
        self.table.prefetch(key);
    }

    /// The live entry at `key`, removing it (and telling watchers) if it expired.
    fn live(&mut self, key: &[u8], now: u64, out: &mut dyn Deliver) -> Option<&table::Slot> {
        if self.expiries.is_empty() {
            // Nothing expires: one lookup.
            return self.table.get(key);
        }
        let expired = self.table.get(key)?.expired(now);
        if expired {
            self.take(key);
            self.notify(key, ChangeKind::Expired, &[], out);
            return None;
        }
        self.table.get(key)
    }

    fn check_message(&self, topic: &[u8], body: &[u8]) -> Result<(), Answer<'static>> {
        if body.len() > self.config.max_value {
            return Err(err(
                ErrorCode::TooLarge,
                format!(
                    "message of {} bytes for topic {:?} exceeds the limit of {} bytes",
                    body.len(),
                    show(topic),
                    self.config.max_value
                ),
            ));
        }
        Ok(())
    }

    fn check_key(&self, key: &[u8], what: &str) -> Result<(), Answer<'static>> {
        if key.is_empty() {
            return Err(err(ErrorCode::InvalidKey, format!("empty {what}")));
        }
        if key.len() > self.config.max_key {
            return Err(err(
                ErrorCode::InvalidKey,
                format!(
                    "{what} of {} bytes exceeds the limit of {} bytes",
                    key.len(),
                    self.config.max_key
                ),
            ));
        }
        if std::str::from_utf8(key).is_err() {
            return Err(err(
                ErrorCode::InvalidKey,
                format!("{what} is not valid UTF-8"),
            ));
        }
        Ok(())
    }

    fn check_value(&self, key: &[u8], value: &[u8]) -> Result<(), Answer<'static>> {
        if value.len() > self.config.max_value {
            return Err(err(
                ErrorCode::TooLarge,
                format!(
                    "value of {} bytes for key {:?} exceeds the limit of {} bytes",
                    value.len(),
                    show(key),
                    self.config.max_value
                ),
            ));
        }
        Ok(())
    }

    /// Appends a record and commits it; `Err` with the answer to give when it fails.
    fn journal(&mut self, rec: RecordRef<'_>) -> Result<(), Answer<'static>> {
        if self.journal_failed {
            return Err(err(
                ErrorCode::Storage,
                "the store's journal failed earlier; writes are refused",
            ));
        }
        let Some(j) = &mut self.journal else {
            return Ok(());
        };
        j.push(rec);
        if let Err(e) = j.commit() {
            tracing::error!("cannot write the store's journal: {e}; refusing writes from now on");
            self.journal_failed = true;
            return Err(err(
                ErrorCode::Storage,
                format!("cannot write the store's journal: {e}"),
            ));
        }
        if j.len_bytes() > COMPACT_MIN.max(4 * self.live_bytes as u64) {
            let live: Vec<RecordRef<'_>> = self
                .table
                .iter()
                .map(|s| RecordRef::Set {
                    key: s.key(),
                    value: s.value(),
                    expires_at_ms: s.expires_at(),
                })
                .collect();
            if let Err(e) = j.compact(live.into_iter()) {
                tracing::warn!("cannot compact the store's journal: {e}");
            }
        }
        Ok(())
    }

    /// Stores a value, journaled and announced.
    fn write(
        &mut self,
        key: &[u8],
        value: &[u8],
        expires_at: Option<u64>,
        out: &mut dyn Deliver,
    ) -> Result<(), Answer<'static>> {
        self.journal(RecordRef::Set {
            key,
            value,
            expires_at_ms: expires_at,
        })?;
        self.put(key, value, expires_at);
        self.notify(key, ChangeKind::Set, value, out);
        Ok(())
    }

    /// Deletes a key, journaled and announced.
    fn erase(&mut self, key: &[u8], out: &mut dyn Deliver) -> Result<(), Answer<'static>> {
        self.journal(RecordRef::Delete { key })?;
        self.take(key);
        self.notify(key, ChangeKind::Deleted, &[], out);
        Ok(())
    }

    /// Applies one operation from `from`.
    pub(crate) fn apply(&mut self, from: ConnId, op: Op, out: &mut dyn Deliver) -> Answer<'_> {
        self.counts.ops += 1;
        match self.apply_inner(from, op, out) {
            Ok(a) => a,
            Err(e) => e,
        }
    }

    fn apply_inner(
        &mut self,
        from: ConnId,
        op: Op,
        out: &mut dyn Deliver,
    ) -> Result<Answer<'_>, Answer<'static>> {
        let now = self.config.clock.now_ms();
        Ok(match op {
            Op::Get { key } => {
                self.check_key(&key, "key")?;
                match self.live(&key, now, out) {
                    Some(s) => Answer::Value(s.value()),
                    None => Answer::Nil,
                }
            }
            Op::Set {
                key,
                value,
                ttl_ms,
                if_absent,
            } => {
                self.check_key(&key, "key")?;
                self.check_value(&key, &value)?;
                if if_absent && self.live(&key, now, out).is_some() {
                    return Ok(Answer::Bool(false));
                }
                let at = ttl_ms.map(|t| now.saturating_add(t));
                self.write(&key, &value, at, out)?;
                if if_absent {
                    Answer::Bool(true)
                } else {
                    Answer::Done
                }
            }
            Op::Delete { key } => {
                self.check_key(&key, "key")?;
                if self.live(&key, now, out).is_none() {
                    return Ok(Answer::Bool(false));
                }
                self.erase(&key, out)?;
                Answer::Bool(true)
            }
            Op::Contains { key } => {
                self.check_key(&key, "key")?;
                Answer::Bool(self.live(&key, now, out).is_some())
            }
            Op::Incr { key, by } => {
                self.check_key(&key, "key")?;
                let (current, at) = match self.live(&key, now, out) {
                    None => (0, None),
                    Some(s) => match rmp_serde::from_slice::<i64>(s.value()) {
                        Ok(n) => (n, s.expires_at()),
                        Err(_) => {
                            return Err(err(
                                ErrorCode::NotAnInteger,
                                format!("the value of key {:?} is not an integer", show(&key)),
                            ))
                        }
                    },
                };
                let Some(next) = current.checked_add(by) else {
                    return Err(err(
                        ErrorCode::Overflow,
                        format!("adding {by} to key {:?} ({current}) overflows", show(&key)),
                    ));
                };
                let mut value = Vec::with_capacity(9);
                // An integer always encodes.
                rmp_serde::encode::write(&mut value, &next).expect("an integer encodes");
                self.write(&key, &value, at, out)?;
                Answer::Int(next)
            }
            Op::Cas { key, expected, new } => {
                self.check_key(&key, "key")?;
                if let Some(n) = &new {
                    self.check_value(&key, n)?;
                }
                let current = self.live(&key, now, out).map(|s| s.value());
                if current != expected.as_deref() {
                    return Ok(Answer::Bool(false));
                }
                let existed = current.is_some();
                match new {
                    Some(n) => self.write(&key, &n, None, out)?,
                    None if existed => self.erase(&key, out)?,
                    None => {}
                }
                Answer::Bool(true)
            }
            Op::Expire { key, ttl_ms } => {
                self.check_key(&key, "key")?;
                let Some(s) = self.live(&key, now, out) else {
                    return Ok(Answer::Bool(false));
                };
                let value = s.value().to_vec();
                let at = ttl_ms.map(|t| now.saturating_add(t));
                self.journal(RecordRef::Expire {
                    key: &key,
                    expires_at_ms: at,
                })?;
                self.put(&key, &value, at);
                Answer::Bool(true)
            }
            Op::Ttl { key } => {
                self.check_key(&key, "key")?;
                Answer::Int(match self.live(&key, now, out) {
                    None => -2,
                    Some(s) => match s.expires_at() {
                        None => -1,
                        Some(t) => t.saturating_sub(now).min(i64::MAX as u64) as i64,
                    },
                })
            }
            Op::Keys { pattern } => {
                self.check_key(&pattern, "pattern")?;
                let m = Matcher::new(&pattern);
                let mut keys: Vec<String> = self
                    .table
                    .iter()
                    .filter(|s| !s.expired(now) && m.matches(s.key()))
                    .map(|s| show(s.key()))
                    .collect();
                keys.sort_unstable();
                Answer::Keys(keys)
            }
            Op::GetAll { pattern } => {
                self.check_key(&pattern, "pattern")?;
                let m = Matcher::new(&pattern);
                let mut entries: Vec<(String, Bytes)> = self
                    .table
                    .iter()
                    .filter(|s| !s.expired(now) && m.matches(s.key()))
                    .map(|s| (show(s.key()), Bytes::copy_from_slice(s.value())))
                    .collect();
                entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                Answer::Entries(entries)
            }
            Op::Len => {
                let expired = self.expiries.range(..(now + 1, Box::from(&[][..]))).count();
                Answer::Int(self.table.len().saturating_sub(expired) as i64)
            }
            Op::Publish { topic, body } => {
                self.check_key(&topic, "topic")?;
                self.check_message(&topic, &body)?;
                Answer::Int(self.publish(&topic, &body, out) as i64)
            }
            Op::PublishMany { topic, bodies } => {
                self.check_key(&topic, "topic")?;
                for body in &bodies {
                    self.check_message(&topic, body)?;
                }
                let reached: usize = bodies.iter().map(|b| self.publish(&topic, b, out)).sum();
                Answer::Int(reached as i64)
            }
            Op::Subscribe {
                sub,
                credit,
                pattern,
            } => {
                self.check_key(&pattern, "topic pattern")?;
                Answer::Int(
                    self.add_sub(from, sub, credit, SubKind::Topic, &pattern)?
                        .into(),
                )
            }
            Op::Watch {
                sub,
                credit,
                prefix,
                key,
            } => {
                if !(prefix && key.is_empty()) {
                    self.check_key(&key, "key")?;
                }
                let kind = if prefix {
                    SubKind::WatchPrefix
                } else {
                    SubKind::WatchKey
                };
                Answer::Int(self.add_sub(from, sub, credit, kind, &key)?.into())
            }
            Op::Unsubscribe { sub } => {
                self.remove_sub((from, sub));
                Answer::Done
            }
            Op::Credit { sub, n } => {
                let cap = self.config.subscription_buffer;
                if let Some(s) = self.subs.get_mut(&(from, sub)) {
                    s.credit = s.credit.saturating_add(n).min(cap);
                    for _ in 0..n.min(s.sizes.len() as u32) {
                        let size = s.sizes.pop_front().unwrap_or(0);
                        s.bytes = s.bytes.saturating_sub(size.into());
                    }
                    // The subscriber has room again: tell it what it missed now, not
                    // with the next delivery, which may never come.
                    if s.credit > 0 && s.missed > 0 {
                        let count = std::mem::take(&mut s.missed);
                        send(out, from, Delivery::Missed { sub, count });
                    }
                }
                Answer::Done
            }
            Op::Sync => Answer::Done,
        })
    }

    fn add_sub(
        &mut self,
        conn: ConnId,
        sub: u32,
        credit: u32,
        kind: SubKind,
        pattern: &[u8],
    ) -> Result<u32, Answer<'static>> {
        let key = (conn, sub);
        let credit = credit.min(self.config.subscription_buffer);
        if self.subs.contains_key(&key) {
            return Err(err(
                ErrorCode::BadRequest,
                format!("subscription number {sub} is already in use"),
            ));
        }
        let count = self.per_conn.entry(conn).or_insert(0);
        if *count >= self.config.max_subscriptions {
            return Err(err(
                ErrorCode::TooManySubscriptions,
                format!(
                    "a process may have at most {} subscriptions and watches",
                    self.config.max_subscriptions
                ),
            ));
        }
        *count += 1;
        match kind {
            SubKind::Topic if is_glob(pattern) => self
                .topic_globs
                .push((key, WildMatch::new(&String::from_utf8_lossy(pattern)))),
            SubKind::Topic => self.topics.entry(Box::from(pattern)).or_default().push(key),
            SubKind::WatchKey => self
                .watched_keys
                .entry(Box::from(pattern))
                .or_default()
                .push(key),
            SubKind::WatchPrefix => self.watched_prefixes.push(key),
        }
        self.subs.insert(
            key,
            Sub {
                kind,
                pattern: Box::from(pattern),
                credit,
                sizes: std::collections::VecDeque::new(),
                bytes: 0,
                missed: 0,
                missed_total: 0,
                metered: true,
                declared_pattern: false,
            },
        );
        Ok(credit)
    }

    fn remove_sub(&mut self, key: SubKey) {
        let Some(s) = self.subs.remove(&key) else {
            return;
        };
        if let Some(c) = self.per_conn.get_mut(&key.0) {
            *c -= 1;
            if *c == 0 {
                self.per_conn.remove(&key.0);
            }
        }
        let drop_from = |map: &mut FxHashMap<Box<[u8]>, Vec<SubKey>>| {
            if let Some(v) = map.get_mut(&s.pattern) {
                v.retain(|k| *k != key);
                if v.is_empty() {
                    map.remove(&s.pattern);
                }
            }
        };
        match s.kind {
            SubKind::Topic if is_glob(&s.pattern) => self.topic_globs.retain(|(k, _)| *k != key),
            SubKind::Topic => drop_from(&mut self.topics),
            SubKind::WatchKey => drop_from(&mut self.watched_keys),
            SubKind::WatchPrefix => self.watched_prefixes.retain(|k| *k != key),
        }
    }

    /// Forgets every subscription of a connection that closed.
    pub(crate) fn drop_conn(&mut self, conn: ConnId) {
        if !self.per_conn.contains_key(&conn) {
            return;
        }
        let keys: Vec<SubKey> = self.subs.keys().filter(|k| k.0 == conn).copied().collect();
        for k in keys {
            self.remove_sub(k);
        }
    }

    /// Takes one credit of a subscription for a delivery of `size` bytes, or counts a
    /// miss: whether to deliver, and the misses to report first.
    fn charge(
        subs: &mut FxHashMap<SubKey, Sub>,
        key: SubKey,
        size: usize,
        max_bytes: u64,
    ) -> Option<u64> {
        let s = subs.get_mut(&key)?;
        if !s.metered {
            return Some(0);
        }
        if s.credit == 0 || s.bytes >= max_bytes {
            s.missed += 1;
            s.missed_total += 1;
            return None;
        }
        s.credit -= 1;
        let size = u32::try_from(size).unwrap_or(u32::MAX);
        s.sizes.push_back(size);
        s.bytes += u64::from(size);
        Some(std::mem::take(&mut s.missed))
    }

    fn publish(&mut self, topic: &Bytes, body: &Bytes, out: &mut dyn Deliver) -> usize {
        self.counts.published += 1;
        let mut reached = 0;
        let exact = self
            .topics
            .get(&topic[..])
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let topic_str = std::str::from_utf8(topic).unwrap_or("");
        let globs = self
            .topic_globs
            .iter()
            .filter(|(_, m)| m.matches(topic_str))
            .map(|(k, _)| k);
        let size = topic.len() + body.len();
        let max_bytes = self.config.subscription_buffer_bytes;
        for &key in exact.iter().chain(globs) {
            let Some(missed) = Self::charge(&mut self.subs, key, size, max_bytes) else {
                continue;
            };
            reached += 1;
            let (conn, sub) = key;
            if missed > 0 {
                send(out, conn, Delivery::Missed { sub, count: missed });
            }
            if conn == LOCAL {
                out.local(Frame::Delivery(Delivery::Message {
                    sub,
                    topic: topic.clone(),
                    body: body.clone(),
                }));
            } else {
                out.publication(conn, sub, topic, body);
            }
        }
        reached
    }

    /// Tells the watchers of `key` that it changed.
    fn notify(&mut self, key: &[u8], kind: ChangeKind, value: &[u8], out: &mut dyn Deliver) {
        if self.watched_prefixes.is_empty() && self.watched_keys.is_empty() {
            return;
        }
        let mut targets: Vec<SubKey> = self.watched_keys.get(key).cloned().unwrap_or_default();
        for k in &self.watched_prefixes {
            if self
                .subs
                .get(k)
                .is_some_and(|s| key.starts_with(&s.pattern))
            {
                targets.push(*k);
            }
        }
        let size = key.len() + value.len();
        let max_bytes = self.config.subscription_buffer_bytes;
        for target in targets {
            let Some(missed) = Self::charge(&mut self.subs, target, size, max_bytes) else {
                continue;
            };
            let (conn, sub) = target;
            if missed > 0 {
                send(out, conn, Delivery::Missed { sub, count: missed });
            }
            if conn == LOCAL {
                out.local(Frame::Delivery(Delivery::Changed {
                    sub,
                    kind,
                    key: Bytes::copy_from_slice(key),
                    value: Bytes::copy_from_slice(value),
                }));
            } else {
                out.encoded(conn, &mut |buf| encode_change(buf, sub, kind, key, value));
            }
        }
    }
}

fn send(out: &mut dyn Deliver, conn: ConnId, d: Delivery) {
    if conn == LOCAL {
        out.local(Frame::Delivery(d));
    } else {
        out.encoded(conn, &mut |buf| encode_delivery(buf, &d));
    }
}

/// A key pattern: a glob (`*`, `?`) or, without glob characters, an exact key.
struct Matcher(Option<WildMatch>, Vec<u8>);

impl Matcher {
    fn new(p: &[u8]) -> Matcher {
        if is_glob(p) {
            Matcher(
                Some(WildMatch::new(&String::from_utf8_lossy(p))),
                Vec::new(),
            )
        } else {
            Matcher(None, p.to_vec())
        }
    }

    fn matches(&self, key: &[u8]) -> bool {
        match &self.0 {
            Some(m) => std::str::from_utf8(key).is_ok_and(|k| m.matches(k)),
            None => key == self.1.as_slice(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Sink {
        local: Vec<Frame>,
        remote: Vec<(ConnId, Vec<u8>)>,
    }

    impl Deliver for Sink {
        fn encoded(&mut self, conn: ConnId, encode: &mut dyn FnMut(&mut Vec<u8>)) {
            let mut b = Vec::new();
            encode(&mut b);
            self.remote.push((conn, b));
        }
        fn local(&mut self, frame: Frame) {
            self.local.push(frame);
        }
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn int(n: i64) -> Bytes {
        Bytes::from(rmp_serde::to_vec(&n).unwrap())
    }

    fn reply(store: &mut Store, op: Op) -> OpReply {
        let mut sink = Sink::default();
        store.apply(LOCAL, op, &mut sink).to_owned_reply()
    }

    fn manual() -> (Store, ManualClock) {
        let clock = ManualClock::new();
        let store = Store::open(StoreConfig {
            clock: Clock::Manual(clock.clone()),
            ..StoreConfig::default()
        })
        .unwrap();
        (store, clock)
    }

    #[test]
    fn set_get_delete_incr_cas() {
        let (mut s, _) = manual();
        let set = |k: &str, v: Bytes| Op::Set {
            key: b(k),
            value: v,
            ttl_ms: None,
            if_absent: false,
        };
        assert_eq!(reply(&mut s, set("a", int(5))), OpReply::Done);
        assert_eq!(
            reply(&mut s, Op::Get { key: b("a") }),
            OpReply::Value(int(5))
        );
        assert_eq!(
            reply(&mut s, Op::Incr { key: b("a"), by: 3 }),
            OpReply::Int(8)
        );
        assert_eq!(
            reply(
                &mut s,
                Op::Incr {
                    key: b("n"),
                    by: -1
                }
            ),
            OpReply::Int(-1)
        );
        assert_eq!(
            reply(
                &mut s,
                Op::Cas {
                    key: b("a"),
                    expected: Some(int(7)),
                    new: Some(int(1))
                }
            ),
            OpReply::Bool(false)
        );
        assert_eq!(
            reply(
                &mut s,
                Op::Cas {
                    key: b("a"),
                    expected: Some(int(8)),
                    new: Some(int(1))
                }
            ),
            OpReply::Bool(true)
        );
        assert_eq!(reply(&mut s, Op::Len), OpReply::Int(2));
        assert_eq!(
            reply(&mut s, Op::Delete { key: b("a") }),
            OpReply::Bool(true)
        );
        assert_eq!(
            reply(&mut s, Op::Delete { key: b("a") }),
            OpReply::Bool(false)
        );
        assert_eq!(
            reply(
                &mut s,
                set("s", Bytes::from(rmp_serde::to_vec("x").unwrap()))
            ),
            OpReply::Done
        );
        assert!(matches!(
            reply(&mut s, Op::Incr { key: b("s"), by: 1 }),
            OpReply::Error {
                code: ErrorCode::NotAnInteger,
                ..
            }
        ));
        assert!(matches!(
            reply(
                &mut s,
                Op::Incr {
                    key: b("n"),
                    by: i64::MIN
                }
            ),
            OpReply::Error {
                code: ErrorCode::Overflow,
                ..
            }
        ));
        assert!(matches!(
            reply(&mut s, Op::Get { key: b("") }),
            OpReply::Error {
                code: ErrorCode::InvalidKey,
                ..
            }
        ));
    }

    #[test]
    fn expiry_follows_the_clock() {
        let (mut s, clock) = manual();
        reply(
            &mut s,
            Op::Set {
                key: b("t"),
                value: int(1),
                ttl_ms: Some(1000),
                if_absent: false,
            },
        );
        assert_eq!(reply(&mut s, Op::Ttl { key: b("t") }), OpReply::Int(1000));
        clock.advance(std::time::Duration::from_millis(999));
        assert_eq!(
            reply(&mut s, Op::Contains { key: b("t") }),
            OpReply::Bool(true)
        );
        clock.advance(std::time::Duration::from_millis(1));
        assert_eq!(reply(&mut s, Op::Len), OpReply::Int(0));
        assert_eq!(reply(&mut s, Op::Get { key: b("t") }), OpReply::Nil);
        assert_eq!(reply(&mut s, Op::Ttl { key: b("t") }), OpReply::Int(-2));
    }

    #[test]
    fn a_subscription_buffers_at_most_its_bytes() {
        let mut s = Store::open(StoreConfig {
            subscription_buffer_bytes: 1000,
            ..StoreConfig::default()
        })
        .unwrap();
        reply(
            &mut s,
            Op::Subscribe {
                sub: 1,
                credit: 100,
                pattern: b("big"),
            },
        );
        let mut sink = Sink::default();
        let publish = |s: &mut Store, sink: &mut Sink| {
            s.apply(
                ConnId(9),
                Op::Publish {
                    topic: b("big"),
                    body: Bytes::from(vec![0u8; 397]),
                },
                sink,
            );
        };
        // 400 bytes each: delivered while fewer than 1000 wait, so three go.
        for _ in 0..5 {
            publish(&mut s, &mut sink);
        }
        assert_eq!(sink.local.len(), 3);
        // Two are consumed and credited: their bytes are free again.
        s.apply(LOCAL, Op::Credit { sub: 1, n: 2 }, &mut sink);
        assert_eq!(
            sink.local[3..],
            [Frame::Delivery(Delivery::Missed { sub: 1, count: 2 })]
        );
        publish(&mut s, &mut sink);
        publish(&mut s, &mut sink);
        publish(&mut s, &mut sink);
        let messages = sink.local[4..]
            .iter()
            .filter(|f| matches!(f, Frame::Delivery(Delivery::Message { .. })))
            .count();
        assert_eq!(messages, 2);
    }

    #[test]
    fn slow_subscriber_misses_and_is_told() {
        let (mut s, _) = manual();
        reply(
            &mut s,
            Op::Subscribe {
                sub: 1,
                credit: 2,
                pattern: b("ev.*"),
            },
        );
        let mut sink = Sink::default();
        for _ in 0..5 {
            s.apply(
                ConnId(9),
                Op::Publish {
                    topic: b("ev.a"),
                    body: int(1),
                },
                &mut sink,
            );
        }
        assert_eq!(sink.local.len(), 2);
        // Credit back: the count goes out at once, with nothing published after.
        s.apply(LOCAL, Op::Credit { sub: 1, n: 2 }, &mut sink);
        assert_eq!(
            sink.local[2..],
            [Frame::Delivery(Delivery::Missed { sub: 1, count: 3 })]
        );
        s.apply(
            ConnId(9),
            Op::Publish {
                topic: b("ev.a"),
                body: int(2),
            },
            &mut sink,
        );
        assert!(matches!(
            sink.local[3..],
            [Frame::Delivery(Delivery::Message { .. })]
        ));
        // More credit with nothing missed since: nothing more is sent.
        s.apply(LOCAL, Op::Credit { sub: 1, n: 1 }, &mut sink);
        assert_eq!(sink.local.len(), 4);
        // Nobody listens: fine, nothing changes.
        let a = s.apply(
            ConnId(9),
            Op::Publish {
                topic: b("other"),
                body: int(2),
            },
            &mut sink,
        );
        assert!(matches!(a, Answer::Int(0)));
    }
}
