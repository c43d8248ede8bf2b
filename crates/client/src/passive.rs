//! Passive receiving: `on_receive(filter, handler)`.
//!
//! Each passive end has one dispatcher task on the node's runtime. For every message it
//! runs, in registration order, every handler whose filter accepts the message. Filters
//! and handlers may be plain functions or async ones. A handler that returns an error or
//! panics is logged; the other handlers and later messages are not affected. Messages
//! are handled one at a time, in order, and credit goes back to the hub only after a
//! message was handled, so a slow handler slows its senders instead of growing memory.

use std::fmt::Display;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::future::{BoxFuture, FutureExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::channel::Channel;
use crate::end::{ErasedHandler, Item, RecvMode};
use crate::error::{OnReceiveError, RecvError};

/// Marker for plain-function filters and handlers.
#[derive(Debug)]
pub enum Sync {}
/// Marker for async filters and handlers.
#[derive(Debug)]
pub enum Async {}

/// What a filter returns: `bool`, or a future of `bool` (which must own what it needs).
pub trait Verdict<M>: Send + 'static {
    /// The verdict as a future.
    fn into_future(self) -> BoxFuture<'static, bool>;
}

impl Verdict<Sync> for bool {
    fn into_future(self) -> BoxFuture<'static, bool> {
        futures::future::ready(self).boxed()
    }
}

impl<Fut> Verdict<Async> for Fut
where
    Fut: Future<Output = bool> + Send + 'static,
{
    fn into_future(self) -> BoxFuture<'static, bool> {
        self.boxed()
    }
}

/// A filter that accepts every message.
pub fn accept_all<T>(_: &T) -> bool {
    true
}

/// What a handler or hook returns when it has nothing to report: `()`, or a `Result`
/// whose error is logged.
pub trait HandlerOutput: Send + 'static {
    /// The failure to log, if any.
    fn failure(self) -> Option<String>;
}

impl HandlerOutput for () {
    fn failure(self) -> Option<String> {
        None
    }
}

impl<E: Display + Send + 'static> HandlerOutput for Result<(), E> {
    fn failure(self) -> Option<String> {
        self.err().map(|e| e.to_string())
    }
}

/// What a handler returns: `()` or `Result<(), E>`, or a future of either.
pub trait HandlerReturn<M>: Send + 'static {
    /// The handler's work as a future of its failure, if any.
    fn into_future(self) -> BoxFuture<'static, Option<String>>;
}

impl HandlerReturn<Sync> for () {
    fn into_future(self) -> BoxFuture<'static, Option<String>> {
        futures::future::ready(None).boxed()
    }
}

impl<E: Display + Send + 'static> HandlerReturn<Sync> for Result<(), E> {
    fn into_future(self) -> BoxFuture<'static, Option<String>> {
        futures::future::ready(self.failure()).boxed()
    }
}

impl<Fut> HandlerReturn<Async> for Fut
where
    Fut: Future + Send + 'static,
    Fut::Output: HandlerOutput,
{
    fn into_future(self) -> BoxFuture<'static, Option<String>> {
        self.map(HandlerOutput::failure).boxed()
    }
}

/// Marker types of a registered filter and handler.
type Markers<T, B, R, MF, MH> = std::marker::PhantomData<fn() -> (T, B, R, MF, MH)>;

struct Registered<T, F, H, B, R, MF, MH> {
    filter: F,
    handler: Arc<H>,
    _m: Markers<T, B, R, MF, MH>,
}

impl<T, F, H, B, R, MF, MH> ErasedHandler for Registered<T, F, H, B, R, MF, MH>
where
    T: DeserializeOwned + Send + 'static,
    F: Fn(&T) -> B + Send + std::marker::Sync + 'static,
    B: Verdict<MF>,
    H: Fn(T) -> R + Send + std::marker::Sync + 'static,
    R: HandlerReturn<MH>,
{
    fn run(
        &self,
        node: &crate::Node,
        body: &bytes::Bytes,
        channel: &str,
    ) -> BoxFuture<'static, ()> {
        let value = match crate::value::decode::<T>(&node.inner, body) {
            Ok(v) => v,
            Err(reason) => {
                let e = RecvError::Decode {
                    channel: channel.to_string(),
                    type_name: std::any::type_name::<T>(),
                    reason,
                };
                tracing::error!("{e}");
                return futures::future::ready(()).boxed();
            }
        };
        let verdict = (self.filter)(&value).into_future();
        let handler = self.handler.clone();
        let channel = channel.to_string();
        async move {
            let accepted = match AssertUnwindSafe(verdict).catch_unwind().await {
                Ok(b) => b,
                Err(_) => {
                    tracing::error!(
                        channel,
                        "a filter panicked; the message is skipped for its handler"
                    );
                    return;
                }
            };
            if !accepted {
                return;
            }
            let run = AssertUnwindSafe(async move { handler(value).into_future().await });
            match run.catch_unwind().await {
                Ok(None) => {}
                Ok(Some(failure)) => tracing::error!(channel, "a handler failed: {failure}"),
                Err(_) => tracing::error!(channel, "a handler panicked"),
            }
        }
        .boxed()
    }
}

impl<T: Serialize + DeserializeOwned + Send + 'static> Channel<T> {
    /// Receives passively: for every message, runs `handler` if `filter` accepts it.
    ///
    /// Filters and handlers may be plain or async functions; several may be registered,
    /// and every one whose filter accepts a message runs, in registration order. A
    /// handler that fails or panics is logged and changes nothing else. Handlers run on
    /// the process's runtime and keep the end held after every `Channel` handle is
    /// dropped. Use [`accept_all`] as the filter to see every message.
    ///
    /// # Errors
    ///
    /// [`OnReceiveError::ModeConflict`] if this end already receives with `recv` in this
    /// process, [`OnReceiveError::Closed`] if the channel is closed.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(ctx: yukicomm_client::Context) -> yukicomm_client::Result<()> {
    /// ctx.passive_channel::<String>().on_receive(
    ///     |s: &String| !s.is_empty(),
    ///     |s| async move { println!("Passive receive: {s}") },
    /// )?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn on_receive<F, B, H, R, MF, MH>(
        &self,
        filter: F,
        handler: H,
    ) -> Result<(), OnReceiveError>
    where
        F: Fn(&T) -> B + Send + std::marker::Sync + 'static,
        B: Verdict<MF>,
        H: Fn(T) -> R + Send + std::marker::Sync + 'static,
        R: HandlerReturn<MH>,
        MF: 'static,
        MH: 'static,
    {
        if let Some((expected, found)) = self.type_mismatch() {
            return Err(OnReceiveError::TypeMismatch {
                channel: self.name(),
                expected,
                found,
            });
        }
        let st = self.state();
        if st.closed.load(Ordering::Acquire) {
            return Err(OnReceiveError::Closed {
                channel: self.name(),
            });
        }
        let first = match st.mode.claim(RecvMode::Passive) {
            Ok(first) => first,
            Err(_) => {
                return Err(OnReceiveError::ModeConflict {
                    channel: self.name(),
                })
            }
        };
        st.handlers.lock().push(Arc::new(Registered {
            filter,
            handler: Arc::new(handler),
            _m: std::marker::PhantomData,
        }));
        if first {
            let keep = self.clone();
            let node = self.node();
            let name = format!("yukicomm-passive-{}", self.id().0);
            if let Err(e) = std::thread::Builder::new()
                .name(name)
                .spawn(move || dispatch(keep))
            {
                st.mode.reset();
                st.handlers.lock().clear();
                tracing::error!(channel = %self.name(), "cannot start the handler thread: {e}");
                return Err(OnReceiveError::Closed {
                    channel: self.name(),
                });
            }
            if let Some(t) = node.inner.transport() {
                t.notice(yukicomm_wire::Notice::Attach {
                    chan: st.key.chan,
                    end: st.key.end,
                    credit: node.inner.window,
                    bytes: node.inner.window_bytes,
                });
            }
        }
        Ok(())
    }
}

/// The dispatcher of one passive end: a thread that waits for messages like a blocking
/// receiver (so that, in a child, it reads the socket itself and no hand-off delays a
/// message) and runs the handlers on the node's runtime with `block_on`. It holds a
/// handle, so the end stays held.
fn dispatch<T>(channel: Channel<T>) {
    let st = channel.state();
    let node = channel.node();
    let runtime = node.runtime().clone();
    loop {
        let Some(item) = channel.next_item() else {
            return;
        };
        match item {
            Item::Wake => {
                if st.closed_for_receivers() && st.rx.is_empty() {
                    tracing::debug!(channel = %channel.name(), "passive channel closed");
                    return;
                }
            }
            Item::Msg { body, _carried } => {
                let handlers = st.handlers.lock().clone();
                let label = channel.name();
                for h in handlers {
                    // `run` catches the handler's panics; this guards against the runtime's.
                    let work = h.run(&node, &body, &label);
                    if std::panic::catch_unwind(AssertUnwindSafe(|| runtime.block_on(work)))
                        .is_err()
                    {
                        tracing::error!(channel = %label, "the runtime for handlers is gone; handler skipped");
                    }
                }
                drop(_carried);
                st.consumed(&node.inner, body.len());
            }
        }
    }
}
