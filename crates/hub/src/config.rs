//! The hub's settings.

use std::path::PathBuf;

use yukicomm_wire::DEFAULT_MAX_FRAME;

use crate::store::StoreConfig;

/// The default of [`HubConfig::window_bytes`]: 32 MiB.
pub const DEFAULT_WINDOW_BYTES: u64 = 32 << 20;

/// Settings of a hub.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Credit window per channel end, in messages: the most messages a process may have
    /// in flight from one end, and the most a receiving process buffers for one end.
    /// Default 4096.
    ///
    /// A sender that has used up its window waits for credit, which comes back in
    /// batches of half a window; a smaller window means more of those waits in a
    /// stream of small messages (1024 costs about a fifth of the throughput of 64-byte
    /// messages here).
    pub window: u32,
    /// Credit window per channel end, in bytes of message bodies. Default 32 MiB.
    ///
    /// A process may send from an end only while fewer than this many bytes it sent
    /// from there are undelivered, and the hub delivers to a receiving process only
    /// while fewer than this many bytes wait there unread. So one sending process holds
    /// at most `window_bytes` plus one message in the hub per channel end (also while
    /// the receiver is a child being restarted, or stopped), and a receiving process
    /// buffers at most as much per end. What happens when a sender's window is used up
    /// is the channel's `FullPolicy`: wait, or fail at once.
    pub window_bytes: u64,
    /// Largest frame accepted, in bytes. Default 16 MiB. A larger frame closes the
    /// connection that sent it.
    pub max_frame: u32,
    /// Directory in which the private socket directory is made. Default:
    /// `$XDG_RUNTIME_DIR`, else the system temporary directory. The hub removes the
    /// directory when it shuts down; at start, it also removes the ones left there by
    /// main processes that were killed (their process gone, their socket dead).
    pub socket_parent: Option<PathBuf>,
    /// Bytes that may wait in the hub to be written to one process before the hub
    /// gives up on it and closes its connection. Default 256 MiB.
    ///
    /// Credit bounds what the hub sends a process that reads its connection; a process
    /// that stops reading it while others keep sending to it, or keeps making requests
    /// without reading the replies, reaches this and is disconnected (its channels see
    /// it leave, as when it dies) instead of growing the main process's memory.
    pub max_unread: usize,
    /// The shared store's settings.
    pub store: StoreConfig,
    /// Whether observers (`yukicomm monitor`) may tap the program's messages. Default
    /// false; `YUKICOMM_MONITOR=1` in the main process's environment also allows it.
    /// Tapping is sampled and bounded and never makes routing wait (see
    /// `docs/PROTOCOL.md`, section 16).
    pub monitor: bool,
    /// Whether the hub advertises itself for the `yukicomm` command (a file in the
    /// user's `yukicomm` runtime directory, removed at shutdown; see
    /// [`discovery`](crate::discovery)). Default true.
    pub advertise: bool,
    /// The Redis protocol endpoint on the store, if any (see
    /// [`resp`](crate::resp)). Default `None`; the environment variable
    /// `YUKICOMM_REDIS` turns it on when this is `None`.
    pub redis: Option<crate::resp::RedisConfig>,
    /// The largest shared-memory ring the hub gives a connection that asks to move into
    /// shared memory (`0`: refuse, every connection stays on its socket). Default 1 MiB
    /// per ring (two rings per connection). A connection gets the largest power of two
    /// within what it asked and this, from 4 KiB to 64 MiB. Linux only. See
    /// `docs/PROTOCOL.md`, section 20.
    pub shared_memory: usize,
}

/// The environment variable that allows the message tap when set to `1` (see
/// [`HubConfig::monitor`]).
pub const ENV_MONITOR: &str = "YUKICOMM_MONITOR";

impl HubConfig {
    /// Whether the tap is allowed, by the setting or the environment.
    pub(crate) fn monitor_allowed(&self) -> bool {
        self.monitor || std::env::var_os(ENV_MONITOR).is_some_and(|v| v == "1")
    }
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            window: 4096,
            window_bytes: DEFAULT_WINDOW_BYTES,
            max_frame: DEFAULT_MAX_FRAME,
            socket_parent: None,
            max_unread: 256 << 20,
            store: StoreConfig::default(),
            monitor: false,
            advertise: true,
            redis: None,
            shared_memory: yukicomm_link::shm::DEFAULT_CAPACITY,
        }
    }
}
