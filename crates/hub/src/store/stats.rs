//! What the store reports for a statistics request: its size, its rates of operations
//! and publications, its journal, and each subscription's buffer.

use std::time::Instant;

use yukicomm_wire::stats::{JournalStats, StoreStats, SubscriptionStats, MAX_SUBSCRIPTIONS};

use super::{journal::Fsync, ConnId, Store, SubKind};

/// Counts kept under the store's lock (plain integers: the lock is held anyway), and
/// their rates, sampled about once a second.
#[derive(Default)]
pub(crate) struct Counts {
    pub(crate) ops: u64,
    pub(crate) published: u64,
    /// The previous sample: when, and the counts then.
    sampled: Option<(Instant, u64, u64)>,
    ops_per_s: u64,
    published_per_s: u64,
}

/// `delta` events over `secs` seconds, per second.
pub(crate) fn per_second(delta: u64, secs: f64) -> u64 {
    if secs <= 0.0 {
        0
    } else {
        (delta as f64 / secs).round() as u64
    }
}

impl Store {
    /// Updates the rates from the counts; called about once a second.
    pub(crate) fn sample_rates(&mut self, now: Instant) {
        let c = &mut self.counts;
        if let Some((at, ops, published)) = c.sampled {
            let secs = now.saturating_duration_since(at).as_secs_f64();
            c.ops_per_s = per_second(c.ops - ops, secs);
            c.published_per_s = per_second(c.published - published, secs);
        }
        c.sampled = Some((now, c.ops, c.published));
    }

    /// The store's figures, and its subscriptions with the connection each belongs to
    /// (at most [`MAX_SUBSCRIPTIONS`]) and how many were left out.
    pub(crate) fn stats(&self) -> (StoreStats, Vec<(ConnId, SubscriptionStats)>, u64) {
        let journal = self.journal.as_ref().map(|j| JournalStats {
            path: j.path().display().to_string(),
            bytes: j.len_bytes(),
            fsync: match j.fsync() {
                Fsync::Always => "always",
                Fsync::EverySecond => "every_second",
                Fsync::Never => "never",
            }
            .into(),
            fsync_lag_ms: j.fsync_lag().as_millis() as u64,
            failed: self.journal_failed,
        });
        let store = StoreStats {
            keys: self.table.len() as u64,
            bytes: self.live_bytes as u64,
            ops: self.counts.ops,
            ops_per_s: self.counts.ops_per_s,
            published: self.counts.published,
            published_per_s: self.counts.published_per_s,
            subscriptions: self.subs.len() as u64,
            journal,
        };
        let capacity = self.config.subscription_buffer;
        let mut subs: Vec<_> = self
            .subs
            .iter()
            .take(MAX_SUBSCRIPTIONS)
            .map(|(&(conn, sub), s)| {
                let stats = SubscriptionStats {
                    process: String::new(),
                    sub,
                    kind: match s.kind {
                        SubKind::Topic => "subscribe",
                        SubKind::WatchKey => "watch",
                        SubKind::WatchPrefix => "watch_prefix",
                    }
                    .into(),
                    pattern: String::from_utf8_lossy(&s.pattern).into_owned(),
                    buffered: s.sizes.len() as u32,
                    buffered_bytes: s.bytes,
                    capacity,
                    missing: s.missed,
                    missed_total: s.missed_total,
                };
                (conn, stats)
            })
            .collect();
        subs.sort_by_key(|(c, s)| (*c, s.sub));
        let omitted = self.subs.len().saturating_sub(MAX_SUBSCRIPTIONS) as u64;
        (store, subs, omitted)
    }
}
