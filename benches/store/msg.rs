//! The messages between the bench's main process and its children: which store a
//! workload runs against, the shapes and operations of the set/get workloads, the
//! commands and their answers, and sending and receiving them with a deadline.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use yukicomm::{Channel, Error};

use crate::plan::{CLIENTS, IN_FLIGHT, STEP_TIMEOUT};
use crate::support::{self, other};
use crate::Result;

/// Which store a workload runs against.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Yukicomm,
    /// Redis at this URL (`unix:///path/redis.sock`, with `?db=N` for another
    /// database).
    Redis(String),
}

impl Target {
    pub fn name(&self) -> &'static str {
        match self {
            Target::Yukicomm => "yukicomm",
            Target::Redis(_) => "Redis",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// One client, one request at a time.
    One,
    /// `CLIENTS` clients, each one request at a time.
    Many,
    /// `CLIENTS` clients, each `IN_FLIGHT` requests in flight.
    Pipelined,
}

impl Shape {
    pub const ALL: [Shape; 3] = [Shape::One, Shape::Many, Shape::Pipelined];

    pub fn name(self) -> &'static str {
        match self {
            Shape::One => "kv-1",
            Shape::Many => "kv-50",
            Shape::Pipelined => "kv-50x16",
        }
    }

    /// The shape in words, for the table.
    pub fn describe(self) -> String {
        match self {
            Shape::One => "1 client, 1 at a time".into(),
            Shape::Many => format!("{CLIENTS} clients, 1 at a time each"),
            Shape::Pipelined => format!("{CLIENTS} clients, {IN_FLIGHT} in flight each"),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvOp {
    Set,
    Get,
    Delete,
}

impl KvOp {
    pub fn name(self) -> &'static str {
        match self {
            KvOp::Set => "SET",
            KvOp::Get => "GET",
            KvOp::Delete => "DEL",
        }
    }
}

#[derive(Serialize, Deserialize, Debug)]
pub enum Msg {
    /// Child to main: the child's loop is running.
    Ready,
    /// Main to client: run `count` operations on keys `(start + i) % keyspace`, in a
    /// shape; `alt` picks the other way of driving it.
    Kv {
        target: Target,
        shape: Shape,
        op: KvOp,
        start: u64,
        count: u64,
        keyspace: u64,
        alt: bool,
    },
    /// Client to main: the workload's duration.
    KvDone {
        elapsed_ns: u64,
    },
    /// Main to client: set (or delete) keys `prefix` 0..count, pipelined.
    Fill {
        target: Target,
        prefix: String,
        count: u64,
        op: KvOp,
    },
    FillDone,
    /// Main to client: publish messages 0..count to `topic`, `window` in flight, to
    /// `subscribers` subscriptions.
    Publish {
        target: Target,
        topic: String,
        count: u64,
        window: u32,
        subscribers: u32,
        alt: bool,
    },
    /// Client to main: monotonic times of the first publish and of the last reply, and
    /// the subscriptions reached, summed over the messages.
    PubDone {
        first_ns: u64,
        end_ns: u64,
        reached: u64,
        /// Times the publisher paused because a subscription had no room.
        pauses: u64,
    },
    /// Main to a subscriber: subscribe to `topic`, tell `Subscribed`, count messages.
    Subscribe {
        target: Target,
        topic: String,
        count: u64,
    },
    Subscribed,
    /// Subscriber to main: what it received, the misses it was told of, the monotonic
    /// time of its last message.
    SubDone {
        received: u64,
        missed: u64,
        last_ns: u64,
    },
    /// Child to main: the command failed.
    Failed(String),
    /// Main to child: stop.
    Quit,
}

fn describe(m: &Msg) -> String {
    match m {
        Msg::Failed(e) => format!("a failure: {e}"),
        other => {
            let s = format!("{other:?}");
            s.split([' ', '(', '{']).next().unwrap_or("").to_string()
        }
    }
}

/// The error for an answer `got` from `from` where `expected` was due; a `Failed`
/// answer gives the child's own error.
pub fn unexpected(from: &str, expected: &str, got: &Msg) -> Error {
    match got {
        Msg::Failed(e) => other(format!("{from} failed: {e}")),
        _ => other(format!(
            "expected {expected} from {from}, received {}",
            describe(got)
        )),
    }
}

/// Sends, waiting for room at most `STEP_TIMEOUT`.
pub fn send(ch: &Channel<Msg>, m: Msg) -> Result<()> {
    support::send(ch, m, STEP_TIMEOUT)
}

/// Receives the next message, waiting at most `limit`.
pub fn recv(ch: &Channel<Msg>, limit: Duration) -> Result<Msg> {
    ch.recv_timeout(limit)
        .map_err(|e| other(format!("waiting on '{}': {e}", ch.name())))
}
