//! Services and calls: typed request and reply between any processes.
//!
//! A process *serves* a service under a name; any process (the main process, a child,
//! the same process) *calls* it and gets the reply. Several processes may serve one
//! name (a pool): the hub gives each call to the server with the fewest calls in
//! progress. Every call has a deadline; when it passes, or when the caller drops an
//! async call, the server's handler is cancelled (its future dropped).
//!
//! With the [`service`](https://docs.rs/yukicomm/latest/yukicomm/attr.service.html)
//! attribute of the `yukicomm` crate a trait becomes a service, with a typed client
//! (`NameClient`) and server (`NameServer`); without it, [`Node::serve_fn`] and
//! [`Node::caller`] serve and call one request type and one reply type:
//!
//! ```no_run
//! # async fn demo(node: yukicomm_client::Node) -> Result<(), Box<dyn std::error::Error>> {
//! node.serve_fn("double", |n: u64| async move { n * 2 })?;
//! let double = node.caller::<u64, u64>("double");
//! assert_eq!(double.call(21)?, 42);                // blocking
//! assert_eq!(double.call_async(4).await?, 8);      // async
//! # Ok(()) }
//! ```
//!
//! **Errors.** A [`CallError`] names the service and the method and says what went
//! wrong ([`CallErrorKind`]): the service's own error, passed back typed; a timeout;
//! nobody serving the name (at once, unless the caller waits for a server); the server
//! ended during the call; the server refused the call at its bound; an unknown method;
//! arguments or a result that did not encode or decode; a request or reply too large;
//! a handler that panicked (the server goes on serving).
//!
//! **Deadlines.** A call waits [`DEFAULT_CALL_TIMEOUT`] unless its client says
//! otherwise ([`ServiceClient::with_timeout`], [`Caller::call_timeout`]). The server
//! sees it ([`current_call`]); the hub forwards the caller's cancellation when it passes.
//! A reply that arrives after the caller gave up is dropped, never given to another call.
//!
//! **Bounds.** A server takes at most [`ServeOptions::max_in_flight`] calls at once
//! (default [`DEFAULT_MAX_IN_FLIGHT`]); beyond it the hub holds further calls, within
//! their deadlines, in the service's queue (at most `MAX_WAITING_CALLS` calls and
//! `MAX_WAITING_BYTES` bytes of arguments, see the hub), or refuses them at once with
//! [`CallErrorKind::Overloaded`] when the server says so ([`WhenFull::Refuse`]), as it
//! does when that queue is full.
//!
//! **Restarts.** A service served by a supervised child keeps its name across a
//! restart of the child: while the child restarts, a call waits (within its deadline)
//! for the new process to serve it again; a call in progress when the old process
//! ended fails with [`CallErrorKind::ServerGone`]; once the supervisor gives up on the
//! child, waiting calls fail with [`CallErrorKind::NoServer`].
//!
//! Calls carry plain values: a [`Channel`](crate::Channel) cannot travel inside a
//! call's arguments or result (send it on a channel instead).

mod client;
mod error;
mod server;

use std::time::Duration;

pub use bytes::Bytes;
pub use client::{CallFuture, Caller, ServiceClient};
pub use error::{CallError, CallErrorKind, NoError, ServeError};
pub use server::{current_call, decode_args, BoxCall, CallInfo, Outcome, Service};
pub use yukicomm_wire::WhenFull;

/// How long a call waits for its reply unless its client says otherwise: 30 seconds.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Most calls a server takes at once unless it says otherwise: 64.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 64;

/// How a process serves a service: its bound of calls in progress and what happens to
/// calls beyond it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeOptions {
    /// Most calls this process takes at once (at least 1). Default
    /// [`DEFAULT_MAX_IN_FLIGHT`].
    pub max_in_flight: u32,
    /// What the hub does with a call when every server of the name is at its bound:
    /// hold it within its deadline ([`WhenFull::Wait`], the default) or refuse it.
    pub when_full: WhenFull,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            when_full: WhenFull::Wait,
        }
    }
}

/// Encodes `value` as MessagePack at the end of `buf` (as channel messages are); a
/// panic in its `Serialize` is an error, and leaves `buf` as it was.
pub(crate) fn encode_value<T: serde::Serialize + ?Sized>(
    buf: &mut Vec<u8>,
    value: &T,
) -> Result<(), String> {
    let start = buf.len();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rmp_serde::encode::write_named(buf, value)
    }));
    let failure = match result {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(e)) => e.to_string(),
        Err(panic) => format!(
            "its Serialize panicked: {}",
            crate::value::panic_message(&*panic)
        ),
    };
    buf.truncate(start);
    Err(failure)
}
