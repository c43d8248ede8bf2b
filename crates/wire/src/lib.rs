//! The yukicomm wire format: frames, their codec, control messages and error codes.
//!
//! Every process in a yukicomm program talks to the hub over one stream socket, and
//! everything on that socket is a [`Frame`]. This crate is pure: it turns frames into
//! bytes and bytes into frames, and knows nothing about sockets, threads or runtimes.
//! `docs/PROTOCOL.md` in the repository describes the same format for implementers in
//! other languages.
//!
//! ```
//! use bytes::BytesMut;
//! use yukicomm_wire::{ChanId, Decoder, End, Frame, encode_msg};
//!
//! let mut buf = Vec::new();
//! encode_msg(&mut buf, ChanId(7), End::B, |body| {
//!     rmp_serde::encode::write(body, "hello").map_err(|e| e.to_string())?;
//!     Ok::<_, String>(Vec::new())
//! })
//! .unwrap();
//!
//! let mut input = BytesMut::from(&buf[..]);
//! let frame = Decoder::new(1 << 20).decode(&mut input).unwrap().unwrap();
//! match frame {
//!     Frame::Msg(m) => {
//!         assert_eq!(m.chan, ChanId(7));
//!         assert_eq!(rmp_serde::from_slice::<String>(&m.body).unwrap(), "hello");
//!     }
//!     other => panic!("unexpected {other:?}"),
//! }
//! ```
#![deny(missing_docs)]

pub mod call;
mod codec;
mod control;
mod kinds;
mod msgpack;
mod names;
pub mod stats;
pub mod store;

pub use codec::{
    encode_control, encode_credit, encode_frame, encode_msg, encode_msg_head, encode_msg_raw,
    encode_msg_tail, Decoder, HEADER_LEN,
};
pub use control::{
    ChannelInfo, ControlAction, ErrorCode, Event, Notice, Reply, Request, WhenFull,
    PROTOCOL_VERSION,
};
pub use kinds::{FrameError, Kind};
pub use msgpack::MAX_CONTROL_DEPTH;
pub use names::{abbreviate, ChannelName, NameError, ProcessName};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Default largest frame a peer accepts, in bytes (length prefix excluded): 16 MiB.
pub const DEFAULT_MAX_FRAME: u32 = 16 * 1024 * 1024;

/// Longest `type_name` a `create` or `lookup` request may carry, in bytes; the hub
/// answers a longer one with `bad_request`.
pub const MAX_TYPE_NAME: usize = 4096;

/// The MessagePack extension type that carries a channel handle inside a message.
pub const CHANNEL_EXT_TYPE: i8 = 1;

/// The hub-wide number of a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ChanId(pub u32);

impl std::fmt::Display for ChanId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// One of the two ends of a channel. What one end sends, the other end receives.
///
/// `A` is the creator's end; `B` is the far end, the one other processes get from the
/// registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[repr(u8)]
pub enum End {
    /// The end held by the channel's creator.
    A = 0,
    /// The far end.
    B = 1,
}

impl End {
    /// The other end.
    pub fn opposite(self) -> End {
        match self {
            End::A => End::B,
            End::B => End::A,
        }
    }

    /// Index usable in a two-element array.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Parses the wire byte.
    pub fn from_u8(b: u8) -> Option<End> {
        match b {
            0 => Some(End::A),
            1 => Some(End::B),
            _ => None,
        }
    }
}

/// A channel end named on the wire: which channel, which end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EndRef {
    /// The channel.
    pub chan: ChanId,
    /// The end.
    pub end: End,
}

/// A channel message: the value, already encoded as MessagePack, addressed to one end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    /// The channel it travels on.
    pub chan: ChanId,
    /// The end that receives it.
    pub to: End,
    /// Channel ends whose handles are encoded inside `body`.
    pub carried: Vec<EndRef>,
    /// The MessagePack-encoded value.
    pub body: Bytes,
}

/// One frame on a yukicomm connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A channel message.
    Msg(Msg),
    /// Flow-control credit for one channel end.
    ///
    /// From a process to the hub: the process, receiving at `end`, can take `n` more
    /// messages and `bytes` more bytes. From the hub to a process: the process may send
    /// `n` more messages and `bytes` more bytes from `end`.
    Credit {
        /// The channel.
        chan: ChanId,
        /// The end the credit belongs to.
        end: End,
        /// How many messages.
        n: u32,
        /// How many bytes of message bodies.
        bytes: u64,
    },
    /// A request that expects exactly one [`Frame::Reply`] with the same `id`.
    Request {
        /// Chosen by the requester, echoed in the reply.
        id: u32,
        /// What is asked.
        body: Request,
    },
    /// The answer to a request.
    Reply {
        /// The request's id.
        id: u32,
        /// The answer.
        body: Reply,
    },
    /// A one-way message from a process to the hub.
    Notice(Notice),
    /// A one-way message from the hub to a process.
    Event(Event),
    /// An operation on the shared store (see [`store`]).
    Op {
        /// Chosen by the requester, echoed in the reply.
        id: u32,
        /// Reply only if the operation fails.
        quiet: bool,
        /// What to do.
        op: store::Op,
    },
    /// The answer to an [`Frame::Op`].
    OpReply {
        /// The operation's id.
        id: u32,
        /// The answer.
        reply: store::OpReply,
    },
    /// A publication or a watched change, for a subscription of the receiving process.
    Delivery(store::Delivery),
    /// A call to a service (see [`call`]): from a caller to the hub, and from the hub
    /// to the process serving it.
    Call(call::Call),
    /// The answer to a [`Frame::Call`]: from the server to the hub, and from the hub to
    /// the caller.
    CallReply {
        /// The call's id.
        id: u32,
        /// How it ended.
        status: call::CallStatus,
        /// The result, the service's error, or a message (see [`call::CallStatus`]).
        body: Bytes,
    },
    /// The caller gave up a call: from the caller to the hub, and from the hub to the
    /// server, which drops the handler.
    Cancel {
        /// The call's id.
        id: u32,
    },
}

/// Environment variable holding the path of the hub's socket, for a process that joins
/// with a token ([`ENV_TOKEN`]); children the supervisor starts get [`ENV_FD`] instead.
/// A remote process puts the hub's address there instead, `yk://host:port`, with its
/// join token in [`ENV_JOIN`].
pub const ENV_HUB: &str = "YUKICOMM_HUB";
/// Environment variable holding a remote process's join token (see [`ENV_HUB`]).
pub const ENV_JOIN: &str = "YUKICOMM_JOIN";
/// Environment variable naming the directory where a remote process keeps its
/// certificate (by default `$XDG_STATE_HOME/yukicomm/remote`).
pub const ENV_STATE_DIR: &str = "YUKICOMM_STATE_DIR";
/// Environment variable holding the child's name.
pub const ENV_NAME: &str = "YUKICOMM_NAME";
/// Environment variable holding the child's secret for [`Request::Hello`], for a process
/// that joins through the socket at [`ENV_HUB`]. The supervisor never sets it.
pub const ENV_TOKEN: &str = "YUKICOMM_TOKEN";
/// Environment variable holding the number of an inherited file descriptor: a Unix
/// stream socket already connected to the hub, made for the child named by [`ENV_NAME`].
/// The supervisor sets it for every child it starts.
pub const ENV_FD: &str = "YUKICOMM_FD";
/// Environment variable that keeps a process's hub connection on its Unix socket when
/// set to `0` (by default a connection on one machine moves into shared memory when the
/// hub offers it; see `docs/PROTOCOL.md`, section 20). Children inherit it.
pub const ENV_SHM: &str = "YUKICOMM_SHM";
/// Environment variable that makes a process's readers busy-poll their shared-memory
/// rings when set to `1`: no sleep and no wake-up on the way of a message, for a
/// processor kept busy while they wait (see `docs/PROTOCOL.md`, section 20.4).
pub const ENV_BUSY_POLL: &str = "YUKICOMM_BUSY_POLL";
/// Environment variable: microseconds a reader watches its shared-memory ring before it
/// sleeps (see `docs/PROTOCOL.md`, section 20.4).
pub const ENV_SPIN_US: &str = "YUKICOMM_SPIN_US";

/// How this process's readers wait on shared-memory rings, from [`ENV_SPIN_US`] and
/// [`ENV_BUSY_POLL`]: `(spin, busy_poll)`.
pub fn ring_wait_from_env() -> (std::time::Duration, bool) {
    let spin = std::env::var(ENV_SPIN_US)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(DEFAULT_SPIN, std::time::Duration::from_micros);
    let busy = std::env::var_os(ENV_BUSY_POLL).is_some_and(|v| v == "1");
    (spin, busy)
}

/// How long a reader watches its shared-memory ring before it sleeps, by default (on a
/// machine with more than one processor; see `docs/PROTOCOL.md`, section 20.4).
pub const DEFAULT_SPIN: std::time::Duration = std::time::Duration::from_micros(20);
/// Environment variable naming the target a re-executed binary runs.
pub const ENV_TARGET: &str = "YUKICOMM_TARGET";
