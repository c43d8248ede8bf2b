//! Statistics: the counters the hub keeps as it routes, and the report it assembles
//! from them for an observer ([`Request::Stats`](yukicomm_wire::Request::Stats)).
//!
//! Routing pays for them with a few relaxed atomic additions per batch of frames, on
//! counters that belong to one connection (so no two readers share them). The report
//! copies what it needs from the router and from the store, each in one short section
//! under its lock, and asks the supervisor about its children (the
//! [`ProcessInfo`] hook) with no hub lock held.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use yukicomm_wire::stats::{MainStats, ProcessState, ProcessStats, Stats, Traffic};
use yukicomm_wire::Frame;

use crate::core::Inner;
use crate::store::per_second;

/// What the supervisor knows about its children: name, state, pid, uptime, restarts,
/// last exit, backoff, CPU and memory. The hub adds what it knows (connection, traffic,
/// messages in flight) to each, by name. Called with no hub lock held.
pub type ProcessInfo = Arc<dyn Fn() -> Vec<ProcessStats> + Send + Sync>;

/// One process's channel traffic: messages and bytes of message bodies it sent (in)
/// and was delivered (out), and their rates.
#[derive(Default)]
pub(crate) struct TrafficCounters {
    msgs_in: AtomicU64,
    bytes_in: AtomicU64,
    msgs_out: AtomicU64,
    bytes_out: AtomicU64,
    rates: Mutex<Rates>,
}

/// The last sample (when, and the four totals then) and the rates it gave.
#[derive(Default)]
struct Rates {
    sampled: Option<(Instant, [u64; 4])>,
    per_s: [u64; 4],
}

impl TrafficCounters {
    /// Counts messages the process sent.
    #[inline]
    pub(crate) fn add_in(&self, msgs: u64, bytes: u64) {
        if msgs > 0 {
            self.msgs_in.fetch_add(msgs, Ordering::Relaxed);
            self.bytes_in.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// Counts messages delivered to the process.
    #[inline]
    pub(crate) fn add_out(&self, msgs: u64, bytes: u64) {
        if msgs > 0 {
            self.msgs_out.fetch_add(msgs, Ordering::Relaxed);
            self.bytes_out.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// Counts the messages among `frames` as sent by the process.
    #[inline]
    pub(crate) fn count_in(&self, frames: &[Frame]) {
        let (n, b) = count_msgs(frames.iter());
        self.add_in(n, b);
    }

    fn totals(&self) -> [u64; 4] {
        [
            self.msgs_in.load(Ordering::Relaxed),
            self.bytes_in.load(Ordering::Relaxed),
            self.msgs_out.load(Ordering::Relaxed),
            self.bytes_out.load(Ordering::Relaxed),
        ]
    }

    /// Updates the rates from the totals; called about once a second.
    pub(crate) fn sample(&self, now: Instant) {
        let totals = self.totals();
        let mut r = self.rates.lock();
        if let Some((at, before)) = r.sampled {
            let secs = now.saturating_duration_since(at).as_secs_f64();
            for i in 0..4 {
                r.per_s[i] = per_second(totals[i].saturating_sub(before[i]), secs);
            }
        }
        r.sampled = Some((now, totals));
    }

    /// The totals and the rates.
    pub(crate) fn snapshot(&self) -> Traffic {
        let t = self.totals();
        let r = self.rates.lock().per_s;
        Traffic {
            msgs_in: t[0],
            bytes_in: t[1],
            msgs_out: t[2],
            bytes_out: t[3],
            msgs_in_per_s: r[0],
            bytes_in_per_s: r[1],
            msgs_out_per_s: r[2],
            bytes_out_per_s: r[3],
        }
    }
}

/// The number of messages among `frames` and the bytes of their bodies.
#[inline]
pub(crate) fn count_msgs<'a>(frames: impl Iterator<Item = &'a Frame>) -> (u64, u64) {
    frames.fold((0, 0), |(n, b), f| match f {
        Frame::Msg(m) => (n + 1, b + m.body.len() as u64),
        _ => (n, b),
    })
}

/// The executable's file name.
fn program_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default()
}

impl Inner {
    /// Updates every rate; called about once a second.
    pub(crate) fn sample_rates(&self) {
        let now = Instant::now();
        self.local_traffic.sample(now);
        let conns: Vec<_> = self.conns.read().values().cloned().collect();
        for c in conns {
            c.traffic.sample(now);
        }
        self.store.lock().sample_rates(now);
    }

    /// The report for an observer.
    pub(crate) fn stats(&self) -> Stats {
        // Asked first and with no lock held: the supervisor's own lock and /proc.
        let supervised = self.process_info.get().map(|f| f()).unwrap_or_default();
        let snap = self.router.lock().snapshot();
        let (store, subs, subscriptions_omitted) = self.store.lock().stats();
        let traffic = |id| {
            self.conns
                .read()
                .get(&id)
                .map(|c| c.traffic.snapshot())
                .unwrap_or_default()
        };
        let mut processes = Vec::with_capacity(snap.children.len());
        for (name, conn) in &snap.children {
            let mut p = supervised
                .iter()
                .find(|p| &p.name == name)
                .cloned()
                .unwrap_or_else(|| ProcessStats {
                    name: name.clone(),
                    state: ProcessState::Remote,
                    pid: None,
                    uptime_ms: None,
                    restarts: 0,
                    last_exit: None,
                    backoff_ms: None,
                    cpu_permille: None,
                    rss_bytes: None,
                    connected: false,
                    traffic: Traffic::default(),
                    queued: 0,
                    window: 0,
                });
            p.connected = conn.is_some();
            p.window = snap.window;
            if let Some(id) = *conn {
                p.traffic = traffic(id);
                p.queued = snap.in_flight.get(&id).copied().unwrap_or(0);
            }
            processes.push(p);
        }
        let subscriptions = subs
            .into_iter()
            .map(|(conn, mut s)| {
                s.process = match conn {
                    crate::LOCAL => "main".into(),
                    c => snap
                        .names
                        .get(&c)
                        .cloned()
                        .unwrap_or_else(|| format!("connection {}", c.0)),
                };
                s
            })
            .collect();
        Stats {
            main: MainStats {
                pid: std::process::id(),
                program: program_name(),
                uptime_ms: self.started.elapsed().as_millis() as u64,
                monitor: self.tap.allowed(),
                traffic: self.local_traffic.snapshot(),
            },
            processes,
            channels: snap.channels,
            channels_omitted: snap.omitted,
            store,
            subscriptions,
            subscriptions_omitted,
        }
    }
}
