//! What a running program reports about itself: the answer to [`Request::Stats`]
//! (`docs/PROTOCOL.md`, section 16), and the samples of the message tap
//! ([`Event::Tapped`]).
//!
//! Every figure is a plain integer (rates per second, CPU in tenths of a percent), so
//! that the reply is exact, comparable and as easy to read from another language as the
//! other control maps.
//!
//! [`Request::Stats`]: crate::Request::Stats
//! [`Event::Tapped`]: crate::Event::Tapped
//!
//! ```
//! use yukicomm_wire::stats::ProcessState;
//! assert!(ProcessState::Running.is_healthy());
//! assert!(!ProcessState::Backoff.is_healthy());
//! assert_eq!(ProcessState::Backoff.to_string(), "backoff");
//! ```

use serde::{Deserialize, Serialize};

use crate::{ChanId, End};

/// The whole report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// The main process.
    pub main: MainStats,
    /// The child processes, by name.
    pub processes: Vec<ProcessStats>,
    /// The channels: every named one, then unnamed ones with messages waiting, by
    /// number, at most [`MAX_CHANNELS`] in all.
    pub channels: Vec<ChannelStats>,
    /// Channels left out of `channels` for its limit.
    pub channels_omitted: u64,
    /// The shared store.
    pub store: StoreStats,
    /// Subscriptions and watches, by process, at most [`MAX_SUBSCRIPTIONS`].
    pub subscriptions: Vec<SubscriptionStats>,
    /// Subscriptions left out of `subscriptions` for its limit.
    pub subscriptions_omitted: u64,
}

/// Most channels a report lists.
pub const MAX_CHANNELS: usize = 10_000;
/// Most subscriptions a report lists.
pub const MAX_SUBSCRIPTIONS: usize = 10_000;

/// The main process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MainStats {
    /// Its pid.
    pub pid: u32,
    /// Its executable's file name.
    pub program: String,
    /// Milliseconds since its hub started.
    pub uptime_ms: u64,
    /// Whether the message tap may be used ([`crate::Request::Monitor`]).
    pub monitor: bool,
    /// Its own channel traffic (what it sends and receives, as one more process).
    pub traffic: Traffic,
}

/// Messages and bytes (of message bodies) a process sent into the hub and received
/// from it: totals since it connected, and rates over the last second or so.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    /// Messages it sent.
    pub msgs_in: u64,
    /// Bytes it sent.
    pub bytes_in: u64,
    /// Messages delivered to it.
    pub msgs_out: u64,
    /// Bytes delivered to it.
    pub bytes_out: u64,
    /// Messages it sent, per second.
    pub msgs_in_per_s: u64,
    /// Bytes it sent, per second.
    pub bytes_in_per_s: u64,
    /// Messages delivered to it, per second.
    pub msgs_out_per_s: u64,
    /// Bytes delivered to it, per second.
    pub bytes_out_per_s: u64,
}

/// The state of a child process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessState {
    /// Being started, not yet running.
    Starting,
    /// Running.
    Running,
    /// Exited and waiting out its restart delay.
    Backoff,
    /// Being stopped (by request, for a restart, or at shutdown).
    Stopping,
    /// Stopped by request; not started again unless asked to.
    Stopped,
    /// Ended, and not restarted by its policy.
    Exited,
    /// Could not be started, or restarted too often: given up on.
    Failed,
    /// Joined from elsewhere, not supervised by this main process.
    Remote,
}

impl ProcessState {
    /// Whether the state is one a health check accepts: `starting`, `running`,
    /// `stopping`, `stopped` (by request) and `remote`. `backoff` and `failed` are
    /// not, and neither is `exited`, unless its last exit was a success (see
    /// [`ProcessStats::is_healthy`]).
    pub fn is_healthy(self) -> bool {
        matches!(
            self,
            ProcessState::Starting
                | ProcessState::Running
                | ProcessState::Stopping
                | ProcessState::Stopped
                | ProcessState::Remote
        )
    }

    /// The name used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessState::Starting => "starting",
            ProcessState::Running => "running",
            ProcessState::Backoff => "backoff",
            ProcessState::Stopping => "stopping",
            ProcessState::Stopped => "stopped",
            ProcessState::Exited => "exited",
            ProcessState::Failed => "failed",
            ProcessState::Remote => "remote",
        }
    }
}

impl std::fmt::Display for ProcessState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a process last ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// Its exit status, if it exited.
    pub code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    /// Why it ended, in plain words ("exited", "crashed", "stopped", "restart
    /// requested", "cannot start: ...").
    pub reason: String,
    /// Milliseconds since it ended.
    pub ago_ms: u64,
}

impl ExitInfo {
    /// Whether it ended with status 0.
    pub fn success(&self) -> bool {
        self.code == Some(0) && self.signal.is_none()
    }
}

impl std::fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.signal, self.code) {
            (Some(s), _) => write!(f, "signal {s}"),
            (None, Some(c)) => write!(f, "status {c}"),
            (None, None) => f.write_str(&self.reason),
        }
    }
}

/// One child process, as the supervisor and the hub see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessStats {
    /// Its name.
    pub name: String,
    /// Its state.
    pub state: ProcessState,
    /// The pid of its program while it runs.
    pub pid: Option<u32>,
    /// Milliseconds since its current process started.
    pub uptime_ms: Option<u64>,
    /// How many times it was started again (by its policy or on request).
    pub restarts: u32,
    /// How its last process ended.
    pub last_exit: Option<ExitInfo>,
    /// In `backoff`: milliseconds until it is started again.
    pub backoff_ms: Option<u64>,
    /// CPU use of its program, in tenths of a percent of one core, over the last
    /// second or so (Linux only).
    pub cpu_permille: Option<u32>,
    /// Resident memory of its program, in bytes (Linux only).
    pub rss_bytes: Option<u64>,
    /// Whether it is connected to the hub.
    pub connected: bool,
    /// Its channel traffic.
    pub traffic: Traffic,
    /// The most messages it has sent from one channel end that the hub has not yet
    /// delivered (it may send while this is below `window`).
    pub queued: u64,
    /// The credit window, in messages.
    pub window: u32,
}

impl ProcessStats {
    /// Whether a health check accepts it: a healthy state, or `exited` with status 0.
    pub fn is_healthy(&self) -> bool {
        self.state.is_healthy()
            || (self.state == ProcessState::Exited
                && self.last_exit.as_ref().is_some_and(ExitInfo::success))
    }
}

/// One channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelStats {
    /// Its number.
    pub chan: ChanId,
    /// Its name in the registry, if it has one.
    pub name: Option<String>,
    /// The type it carries.
    pub type_name: String,
    /// Whether it is closed.
    pub closed: bool,
    /// Its two ends, `A` then `B`.
    pub ends: Vec<EndStats>,
}

/// One end of a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndStats {
    /// Which end.
    pub end: End,
    /// The processes holding it (`main` is the main process).
    pub holders: Vec<String>,
    /// The processes receiving at it, actively or with a handler (none: messages to
    /// it wait in the hub).
    pub receivers: Vec<String>,
    /// Messages waiting in the hub to be delivered at this end.
    pub backlog: u64,
    /// Their bytes.
    pub backlog_bytes: u64,
}

/// The shared store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStats {
    /// Keys stored.
    pub keys: u64,
    /// Bytes of keys and values stored.
    pub bytes: u64,
    /// Operations applied, in all.
    pub ops: u64,
    /// Operations applied per second.
    pub ops_per_s: u64,
    /// Messages published, in all.
    pub published: u64,
    /// Messages published per second.
    pub published_per_s: u64,
    /// Subscriptions and watches.
    pub subscriptions: u64,
    /// The journal, if the store has one.
    pub journal: Option<JournalStats>,
}

/// The store's journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalStats {
    /// Its file.
    pub path: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// When it syncs: `always`, `every_second` or `never`.
    pub fsync: String,
    /// Milliseconds since the oldest write not yet synced to disk (0: all synced).
    pub fsync_lag_ms: u64,
    /// A write failed: writes are refused from then on.
    pub failed: bool,
}

/// One subscription or watch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionStats {
    /// The process it belongs to.
    pub process: String,
    /// Its number in that process.
    pub sub: u32,
    /// `subscribe`, `watch` or `watch_prefix`.
    pub kind: String,
    /// The topic pattern, key or prefix.
    pub pattern: String,
    /// Deliveries sent and not yet consumed.
    pub buffered: u32,
    /// Their bytes.
    pub buffered_bytes: u64,
    /// Most deliveries it may have waiting.
    pub capacity: u32,
    /// Deliveries dropped since the last one that got through (not yet reported to it).
    pub missing: u64,
    /// Deliveries dropped in all.
    pub missed_total: u64,
}

/// Where a tapped message went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TapTarget {
    /// A channel message, to `end`.
    Channel {
        /// The channel's number.
        chan: ChanId,
        /// Its name, if it has one.
        name: Option<String>,
        /// The end it was sent to.
        end: End,
    },
    /// A publication.
    Topic {
        /// The topic.
        topic: String,
    },
}
