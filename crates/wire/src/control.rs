//! Control messages: requests, replies, notices and events, encoded as MessagePack maps
//! with a `"op"` (or `"reply"`, `"event"`) field naming the variant.

use serde::{Deserialize, Serialize};

use crate::{ChanId, End};

/// The protocol version a process announces in [`Request::Hello`].
pub const PROTOCOL_VERSION: u32 = 2;

/// What a process asks the hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// The first frame on every connection: who is connecting.
    Hello {
        /// Must equal [`PROTOCOL_VERSION`].
        version: u32,
        /// The child name the supervisor gave this process.
        name: String,
        /// The secret the supervisor gave this process.
        token: String,
    },
    /// Before `Hello`, optional: move this connection's bytes into shared memory (two
    /// processes on one machine, over a Unix socket). The hub answers
    /// [`Reply::SharedMemory`] with the region's descriptor attached (`SCM_RIGHTS`), or
    /// an error (then the connection goes on over the socket). Nothing else may be sent
    /// until the answer; after it, every frame both ways goes through the rings and the
    /// socket carries only wake-ups. See `docs/PROTOCOL.md`.
    SharedMemory {
        /// Bytes asked for each ring (a power of two); the hub may give another size.
        capacity: u32,
    },
    /// Create a new, unnamed channel; the requester holds its end `A`, and its end `B`
    /// too when `pair` is true.
    Create {
        /// The Rust type name (or any agreed name) of the values it carries.
        type_name: String,
        /// Whether the requester also gets end `B` (to hand it to another process).
        #[serde(default)]
        pair: bool,
    },
    /// Give a name to a channel in the registry.
    Register {
        /// The name.
        name: String,
        /// The channel.
        chan: ChanId,
    },
    /// Find a channel by name.
    Lookup {
        /// The name.
        name: String,
        /// The type the requester expects. Recorded for a child's own channel that has
        /// no type yet; the reply carries the channel's type for the requester to check.
        type_name: String,
    },
    /// List the registry.
    List,
    /// Serve calls to the service `name` from now on (see [`crate::call`]). Several
    /// processes may serve one name: the hub gives each call to the one with the
    /// fewest calls in progress.
    Serve {
        /// The service's name (a valid channel name).
        name: String,
        /// Most calls this process takes at once; at least 1.
        max_in_flight: u32,
        /// What the hub does with a call when every server has `max_in_flight` calls:
        /// hold it until one is free, within its deadline, or refuse it at once.
        #[serde(default)]
        when_full: WhenFull,
    },
    /// Stop serving the service `name`; calls in progress go on.
    Unserve {
        /// The service's name.
        name: String,
    },
    /// Restart or stop a child process.
    Control {
        /// What to do.
        action: ControlAction,
        /// Which child; `None` means the requester itself.
        target: Option<String>,
    },
    /// The first frame of an observer's connection (the `yukicomm` command): a
    /// process of the same user that asks about the program instead of joining it.
    Observe {
        /// Must equal [`PROTOCOL_VERSION`].
        version: u32,
    },
    /// What the program is doing: processes, channels, store, subscriptions
    /// (observers only).
    Stats,
    /// Start sampling messages on channels and topics whose name matches `pattern`
    /// (observers only; the main process must allow it).
    Monitor {
        /// A glob (`*`, `?`) matched against channel names and topics.
        pattern: String,
    },
}

/// What the hub does with a call when every server of its service is at its bound
/// ([`Request::Serve`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Hold the call until a server is free, within its deadline.
    #[default]
    Wait,
    /// Answer it at once with the status `overloaded`.
    Refuse,
}

/// What a [`Request::Control`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlAction {
    /// Stop the child and start it again.
    Restart,
    /// Stop the child and do not start it again.
    Stop,
}

/// The hub's answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    /// Answer to `Hello`.
    Welcome {
        /// The child name the hub knows this process by.
        name: String,
        /// Credit window per channel end, for sending and receiving, in messages.
        window: u32,
        /// Credit window per channel end, for sending and receiving, in bytes of
        /// message bodies.
        window_bytes: u64,
        /// Largest frame the hub accepts.
        max_frame: u32,
        /// The child's `NAME-active` channel; the child holds end `A`.
        active: ChanId,
        /// The child's `NAME-passive` channel; the child holds end `A`.
        passive: ChanId,
    },
    /// Answer to `SharedMemory`: the region's descriptor comes with this frame.
    SharedMemory {
        /// Bytes of each ring.
        capacity: u32,
    },
    /// Answer to `Create`.
    Created {
        /// The new channel.
        chan: ChanId,
    },
    /// Answer to `Lookup`.
    Found {
        /// The channel.
        chan: ChanId,
        /// The end the requester now holds.
        end: End,
        /// True when the other end was held and every holder has gone.
        peer_gone: bool,
        /// With `peer_gone`: messages from the other end are still queued for this one,
        /// as for [`Event::PeerGone`]'s `queued`.
        #[serde(default)]
        peer_queued: bool,
        /// The type the channel carries (recorded at creation, or by the first typed
        /// lookup of a child's own channel).
        type_name: String,
    },
    /// Answer to `List`.
    Channels {
        /// Every named channel.
        channels: Vec<ChannelInfo>,
    },
    /// The request was carried out.
    Done,
    /// The request failed.
    Error {
        /// Machine-readable reason.
        code: ErrorCode,
        /// Human-readable reason, naming the channel, key or process concerned.
        message: String,
    },
    /// Answer to `Observe`.
    Observing {
        /// The main process's pid.
        pid: u32,
        /// Whether the message tap may be used.
        monitor: bool,
    },
    /// Answer to `Stats`.
    Stats {
        /// The report.
        stats: Box<crate::stats::Stats>,
    },
}

/// A registry entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelInfo {
    /// The registered name.
    pub name: String,
    /// The channel.
    pub chan: ChanId,
    /// The type name recorded when it was created.
    pub type_name: String,
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame or request is not valid here.
    BadRequest,
    /// `Hello` named an unknown child or the wrong token.
    Unauthorized,
    /// The protocol version is not supported.
    UnsupportedVersion,
    /// A channel name is not valid.
    InvalidName,
    /// The name is already registered.
    NameTaken,
    /// No channel has that name.
    UnknownChannel,
    /// The channel carries another type.
    TypeMismatch,
    /// The channel is closed.
    Closed,
    /// No child has that name.
    UnknownProcess,
    /// The hub is shutting down.
    ShuttingDown,
    /// A store key (or topic, or pattern) is empty, too long or not valid UTF-8.
    InvalidKey,
    /// A value or message exceeds the store's limit.
    TooLarge,
    /// The stored value is not an integer.
    NotAnInteger,
    /// The integer would overflow.
    Overflow,
    /// The store could not write its journal; nothing changed.
    Storage,
    /// The process has too many subscriptions and watches.
    TooManySubscriptions,
    /// The main process does not allow the message tap.
    MonitorOff,
}

/// A one-way message from a process to the hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Notice {
    /// The process starts receiving at `end` and can take `credit` messages.
    Attach {
        /// The channel.
        chan: ChanId,
        /// The end it receives at.
        end: End,
        /// How many messages it can take now.
        credit: u32,
        /// How many bytes of message bodies it can take now.
        bytes: u64,
    },
    /// The process dropped its last handle to `end`.
    Release {
        /// The channel.
        chan: ChanId,
        /// The end.
        end: End,
        /// How many grants of this end (replies `Created` and `Found`, and messages
        /// carrying it) the process received since its previous release of it.
        count: u32,
    },
    /// Close the channel for everyone.
    Close {
        /// The channel.
        chan: ChanId,
    },
}

/// A one-way message from the hub to a process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Every holder of `end` has gone: the process holding the opposite end has no peer.
    PeerGone {
        /// The channel.
        chan: ChanId,
        /// The end that has no holder any more.
        end: End,
        /// Messages sent from `end` before its holders went are still queued in the hub
        /// for the opposite end. They are delivered first; once none is left, the hub
        /// sends `PeerGone` again with `queued` false.
        #[serde(default)]
        queued: bool,
    },
    /// `end` has a holder again.
    PeerBack {
        /// The channel.
        chan: ChanId,
        /// The end that is held again.
        end: End,
    },
    /// The channel was closed.
    Closed {
        /// The channel.
        chan: ChanId,
        /// Messages sent before the close are still queued in the hub for an end this
        /// process holds (no process was receiving there). They are delivered once it
        /// receives; once none is left, the hub sends `Closed` again with `queued`
        /// false.
        #[serde(default)]
        queued: bool,
    },
    /// The hub refused a frame from this process; the connection stays open.
    Refused {
        /// The channel concerned, if any.
        chan: Option<ChanId>,
        /// Machine-readable reason.
        code: ErrorCode,
        /// Human-readable reason.
        message: String,
    },
    /// A sampled message, for an observer's `Monitor` (never for other processes).
    Tapped {
        /// The process that sent it (`main` for the main process).
        from: String,
        /// Where it went.
        target: crate::stats::TapTarget,
        /// The size of its body in bytes.
        len: u64,
        /// Its first bytes (at most 256), MessagePack as the sender encoded it.
        #[serde(with = "serde_bytes")]
        head: Vec<u8>,
    },
    /// Samples for an observer's `Monitor` were dropped (its buffer was full).
    TapDropped {
        /// How many since the last report.
        count: u64,
    },
}
