//! Subscriptions to topics ([`Subscriber`], [`Subscription`]) and watches of keys
//! ([`Watch`]).
//!
//! Each has a buffer in this process, bounded by the credit it grants the hub (the
//! hub's `subscription_buffer`, 1024 by default). When the buffer is full the hub drops
//! what comes next for it and counts. A subscription hands credit back each time it has
//! taken half its buffer; the hub then sends the count at once, so it takes its place
//! right after the messages that were buffered before the loss and before any message
//! published after it, whether or not anything more is ever published. It arrives as
//! [`SubscriberError::Missed`] from a receive, or as a warning and
//! [`Subscription::missed`] for a callback. A slow subscriber misses messages; it never
//! slows the publisher or grows anyone's memory.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use serde::de::DeserializeOwned;
use yukicomm_wire::store::{ChangeKind, Delivery, Op, OpReply};
use yukicomm_wire::{ChanId, End, EndRef};

use super::{key_bytes, Link, Store, StoreError, StoredValue};
use crate::passive::HandlerReturn;

/// Credit asked for; the hub grants at most its `subscription_buffer`.
const ASK_CREDIT: u32 = 1024;

/// A published message, as a subscriber receives it. Dereferences to the message.
#[derive(Debug, Clone, PartialEq)]
pub struct Publication<T> {
    /// The topic it was published to.
    pub topic: String,
    /// The message.
    pub value: T,
}

impl<T> std::ops::Deref for Publication<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T> Publication<T> {
    /// The message.
    pub fn into_inner(self) -> T {
        self.value
    }
}

/// A change of a watched key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The key.
    pub key: String,
    /// What happened.
    pub kind: ChangeKind,
    /// The new value, for [`ChangeKind::Set`].
    pub value: Option<StoredValue>,
}

/// Why a receive from a [`Subscriber`] or [`Watch`] returned no message.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SubscriberError {
    /// The buffer was full and `count` messages were dropped at this point of the
    /// stream: after the messages received before this error, before those received
    /// after it. It comes as soon as the messages buffered before the loss have been
    /// received, without waiting for more to be published. The next receive continues
    /// with the messages that followed.
    #[error("subscription {pattern:?} missed {count} message(s): it did not keep up")]
    Missed {
        /// The subscription's pattern (or watched key).
        pattern: String,
        /// How many.
        count: u64,
    },
    /// A message did not decode as the subscriber's type; it is skipped.
    #[error("topic {topic:?}: message does not decode as {type_name}: {reason}")]
    Decode {
        /// The topic.
        topic: String,
        /// The expected type.
        type_name: &'static str,
        /// The decoder's message.
        reason: String,
    },
    /// The hub connection is gone.
    #[error("subscription {pattern:?}: the hub connection is closed")]
    Disconnected {
        /// The pattern.
        pattern: String,
    },
    /// Nothing arrived before the deadline (`recv_timeout`).
    #[error("subscription {pattern:?}: nothing arrived in time")]
    Timeout {
        /// The pattern.
        pattern: String,
    },
    /// Nothing is waiting (`try_recv`).
    #[error("subscription {pattern:?}: nothing is waiting")]
    Empty {
        /// The pattern.
        pattern: String,
    },
}

/// A subscription being set up: undone if it fails or its future is dropped.
struct Starting {
    link: Link,
    sub: u32,
    armed: bool,
}

impl Drop for Starting {
    fn drop(&mut self) {
        if self.armed {
            self.link.sink.remove_sub(self.sub);
            if let Ok(t) = self.link.node.transport() {
                let _ = t.store_send(Op::Unsubscribe { sub: self.sub });
            }
        }
    }
}

/// What every kind of subscription shares: its number, its queue, its credit.
struct Core {
    link: Link,
    sub: u32,
    pattern: String,
    rx: flume::Receiver<Delivery>,
    /// Deliveries consumed since credit was last returned.
    consumed: AtomicU32,
    /// Return credit each time this many were consumed.
    batch: u32,
    missed: AtomicU64,
}

impl Core {
    /// Prepares a subscription (`watch`: `Some(prefix)`): its number and queue, and the
    /// operation that registers it with the hub.
    fn prepare(
        store: &Store,
        pattern: &str,
        watch: Option<bool>,
    ) -> Result<(Starting, flume::Receiver<Delivery>, Op), StoreError> {
        let link = store.link()?.clone();
        let key = key_bytes(pattern).or_else(|e| match watch {
            Some(true) if pattern.is_empty() => Ok(Bytes::new()),
            _ => Err(e),
        })?;
        let (tx, rx) = flume::unbounded();
        let sub = link.sink.add_sub(tx);
        let op = match watch {
            None => Op::Subscribe {
                sub,
                credit: ASK_CREDIT,
                pattern: key,
            },
            Some(prefix) => Op::Watch {
                sub,
                credit: ASK_CREDIT,
                prefix,
                key,
            },
        };
        Ok((
            Starting {
                link,
                sub,
                armed: true,
            },
            rx,
            op,
        ))
    }

    /// Completes a subscription with the hub's answer.
    fn finish(
        mut starting: Starting,
        rx: flume::Receiver<Delivery>,
        pattern: &str,
        reply: Result<OpReply, StoreError>,
    ) -> Result<Core, StoreError> {
        let granted = match reply? {
            OpReply::Int(n) => n.clamp(1, ASK_CREDIT as i64) as u32,
            OpReply::Error { code, message } => {
                return Err(StoreError::from_reply(pattern, code, message))
            }
            other => return Err(super::unexpected(pattern, other)),
        };
        starting.armed = false;
        Ok(Core {
            link: starting.link.clone(),
            sub: starting.sub,
            pattern: pattern.to_string(),
            rx,
            consumed: AtomicU32::new(0),
            batch: (granted / 2).max(1),
            missed: AtomicU64::new(0),
        })
    }

    fn start(store: &Store, pattern: &str, watch: Option<bool>) -> Result<Core, StoreError> {
        let (starting, rx, op) = Core::prepare(store, pattern, watch)?;
        let reply = store.call(pattern, op);
        Core::finish(starting, rx, pattern, reply)
    }

    async fn start_async(
        store: &Store,
        pattern: &str,
        watch: Option<bool>,
    ) -> Result<Core, StoreError> {
        let (starting, rx, op) = Core::prepare(store, pattern, watch)?;
        let reply = store.call_async(pattern, op).await;
        Core::finish(starting, rx, pattern, reply)
    }

    /// Counts a consumed delivery and returns credit in batches.
    fn consumed(&self) {
        let c = self.consumed.fetch_add(1, Ordering::AcqRel) + 1;
        if c >= self.batch {
            let n = self.consumed.swap(0, Ordering::AcqRel);
            if n > 0 {
                if let Ok(t) = self.link.node.transport() {
                    let _ = t.store_send(Op::Credit { sub: self.sub, n });
                }
            }
        }
    }

    fn disconnected(&self) -> SubscriberError {
        SubscriberError::Disconnected {
            pattern: self.pattern.clone(),
        }
    }

    /// The next delivery, waiting until `deadline` (`None`: no limit).
    fn next(&self, deadline: Option<Instant>) -> Result<Delivery, SubscriberError> {
        if let Ok(d) = self.rx.try_recv() {
            return Ok(d);
        }
        // In a child, read the connection on this thread while waiting: no hand-off.
        let node = &self.link.node;
        if let Ok(t) = node.transport() {
            let key = EndRef {
                chan: ChanId(0),
                end: End::A,
            };
            let _ = t.pump(key, &|| !self.rx.is_empty() || node.is_lost(), deadline);
        }
        match deadline {
            None => self.rx.recv().map_err(|_| self.disconnected()),
            Some(d) => self.rx.recv_deadline(d).map_err(|e| match e {
                flume::RecvTimeoutError::Timeout => SubscriberError::Timeout {
                    pattern: self.pattern.clone(),
                },
                flume::RecvTimeoutError::Disconnected => self.disconnected(),
            }),
        }
    }

    fn try_next(&self) -> Result<Delivery, SubscriberError> {
        self.rx.try_recv().map_err(|e| match e {
            flume::TryRecvError::Empty => SubscriberError::Empty {
                pattern: self.pattern.clone(),
            },
            flume::TryRecvError::Disconnected => self.disconnected(),
        })
    }

    async fn next_async(&self) -> Result<Delivery, SubscriberError> {
        self.rx.recv_async().await.map_err(|_| self.disconnected())
    }

    fn stop(&self) {
        self.link.sink.remove_sub(self.sub);
        if let Ok(t) = self.link.node.transport() {
            let _ = t.store_send(Op::Unsubscribe { sub: self.sub });
        }
    }

    fn missed(&self, count: u64) -> SubscriberError {
        self.missed.fetch_add(count, Ordering::Relaxed);
        SubscriberError::Missed {
            pattern: self.pattern.clone(),
            count,
        }
    }
}

fn publication<T: DeserializeOwned>(
    core: &Core,
    d: Delivery,
) -> Result<Publication<T>, SubscriberError> {
    match d {
        Delivery::Message { topic, body, .. } => {
            core.consumed();
            let topic = String::from_utf8_lossy(&topic).into_owned();
            match rmp_serde::from_slice::<T>(&body) {
                Ok(value) => Ok(Publication { topic, value }),
                Err(e) => Err(SubscriberError::Decode {
                    topic,
                    type_name: std::any::type_name::<T>(),
                    reason: e.to_string(),
                }),
            }
        }
        Delivery::Missed { count, .. } => Err(core.missed(count)),
        Delivery::Changed { .. } => {
            core.consumed();
            Err(SubscriberError::Decode {
                topic: core.pattern.clone(),
                type_name: std::any::type_name::<T>(),
                reason: "a key change reached a topic subscription".into(),
            })
        }
    }
}

fn change(core: &Core, d: Delivery) -> Result<Change, SubscriberError> {
    match d {
        Delivery::Changed {
            kind, key, value, ..
        } => {
            core.consumed();
            let key = String::from_utf8_lossy(&key).into_owned();
            let value = (kind == ChangeKind::Set).then(|| StoredValue {
                key: key.clone(),
                bytes: value,
            });
            Ok(Change { key, kind, value })
        }
        Delivery::Missed { count, .. } => Err(core.missed(count)),
        Delivery::Message { topic, .. } => {
            core.consumed();
            Err(SubscriberError::Decode {
                topic: String::from_utf8_lossy(&topic).into_owned(),
                type_name: "Change",
                reason: "a publication reached a watch".into(),
            })
        }
    }
}

/// A subscription to a topic pattern, received from like a channel. Dropping it ends
/// the subscription.
///
/// # Examples
///
/// ```no_run
/// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let store = yukicomm_client::shared_memory();
/// let events = store.subscriber::<String>("events.*")?;
/// store.publish("events.login", &"alice")?;
/// let p = events.recv()?;
/// assert_eq!((p.topic.as_str(), p.value.as_str()), ("events.login", "alice"));
/// # Ok(())
/// # }
/// ```
pub struct Subscriber<T> {
    core: Arc<Core>,
    /// Whether [`handle`](Subscriber::handle) gave the subscription to a handler, which
    /// keeps it after this handle is dropped.
    handed_off: bool,
    _t: std::marker::PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for Subscriber<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field("pattern", &self.core.pattern)
            .finish_non_exhaustive()
    }
}

impl<T: DeserializeOwned> Subscriber<T> {
    /// Waits for the next message.
    ///
    /// # Errors
    ///
    /// [`SubscriberError::Missed`] (then go on receiving), `Decode`, `Disconnected`.
    pub fn recv(&self) -> Result<Publication<T>, SubscriberError> {
        publication(&self.core, self.core.next(None)?)
    }

    /// Waits for the next message until `timeout`.
    ///
    /// # Errors
    ///
    /// As [`recv`](Subscriber::recv), and [`SubscriberError::Timeout`].
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Publication<T>, SubscriberError> {
        publication(&self.core, self.core.next(Some(Instant::now() + timeout))?)
    }

    /// The next message if one is waiting.
    ///
    /// # Errors
    ///
    /// As [`recv`](Subscriber::recv), and [`SubscriberError::Empty`].
    pub fn try_recv(&self) -> Result<Publication<T>, SubscriberError> {
        publication(&self.core, self.core.try_next()?)
    }

    /// Async [`recv`](Subscriber::recv).
    ///
    /// # Errors
    ///
    /// As [`recv`](Subscriber::recv).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a message is taken only when the future completes.
    pub async fn recv_async(&self) -> Result<Publication<T>, SubscriberError> {
        publication(&self.core, self.core.next_async().await?)
    }

    /// How many messages this subscription missed so far.
    pub fn missed(&self) -> u64 {
        self.core.missed.load(Ordering::Relaxed)
    }

    /// The pattern.
    pub fn pattern(&self) -> &str {
        &self.core.pattern
    }

    /// Hands the subscription to `handler`, run for every message from now on, as
    /// [`Store::subscribe`] does; messages already waiting here go to the handler first.
    /// Name the message type once, on [`Store::subscriber`], and the handler needs no
    /// annotation.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn demo() -> Result<(), yukicomm_client::StoreError> {
    /// let store = yukicomm_client::shared_memory();
    /// let logins = store.subscriber::<String>("events.login")?.handle(|e| async move {
    ///     println!("{} logged in", e.value);
    /// });
    /// # Ok(())
    /// # }
    /// ```
    pub fn handle<H, R, M>(mut self, handler: H) -> Subscription
    where
        T: Send + 'static,
        H: Fn(Publication<T>) -> R + Send + Sync + 'static,
        R: HandlerReturn<M>,
    {
        self.handed_off = true;
        spawn_handler(self.core.clone(), handler)
    }
}

impl<T> Drop for Subscriber<T> {
    fn drop(&mut self) {
        if !self.handed_off {
            self.core.stop();
        }
    }
}

/// Runs `handler` for every delivery of `core`, one at a time, on the process's runtime.
fn spawn_handler<T, H, R, M>(core: Arc<Core>, handler: H) -> Subscription
where
    T: DeserializeOwned + Send + 'static,
    H: Fn(Publication<T>) -> R + Send + Sync + 'static,
    R: HandlerReturn<M>,
{
    let task = core.clone();
    core.link.node.runtime().spawn(async move {
        while let Ok(d) = task.next_async().await {
            match publication::<T>(&task, d) {
                Ok(p) => {
                    let run = AssertUnwindSafe(async { handler(p).into_future().await });
                    match run.catch_unwind().await {
                        Ok(None) => {}
                        Ok(Some(failure)) => tracing::error!(
                            pattern = task.pattern,
                            "a subscription handler failed: {failure}"
                        ),
                        Err(_) => {
                            tracing::error!(
                                pattern = task.pattern,
                                "a subscription handler panicked"
                            )
                        }
                    }
                }
                Err(e) => tracing::warn!("{e}"),
            }
        }
    });
    Subscription { core }
}

/// A watch of a key (or of every key with a prefix): told of every change. Dropping it
/// ends the watch.
pub struct Watch {
    core: Core,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("key", &self.core.pattern)
            .finish_non_exhaustive()
    }
}

impl Watch {
    /// Waits for the next change.
    ///
    /// # Errors
    ///
    /// [`SubscriberError::Missed`] (then go on receiving), `Disconnected`.
    pub fn recv(&self) -> Result<Change, SubscriberError> {
        change(&self.core, self.core.next(None)?)
    }

    /// Waits for the next change until `timeout`.
    ///
    /// # Errors
    ///
    /// As [`recv`](Watch::recv), and [`SubscriberError::Timeout`].
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Change, SubscriberError> {
        change(&self.core, self.core.next(Some(Instant::now() + timeout))?)
    }

    /// The next change if one is waiting.
    ///
    /// # Errors
    ///
    /// As [`recv`](Watch::recv), and [`SubscriberError::Empty`].
    pub fn try_recv(&self) -> Result<Change, SubscriberError> {
        change(&self.core, self.core.try_next()?)
    }

    /// Async [`recv`](Watch::recv).
    ///
    /// # Errors
    ///
    /// As [`recv`](Watch::recv).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn recv_async(&self) -> Result<Change, SubscriberError> {
        change(&self.core, self.core.next_async().await?)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.core.stop();
    }
}

/// A subscription whose messages go to a handler. It lasts until
/// [`unsubscribe`](Subscription::unsubscribe) or the end of the process; dropping this
/// handle does not end it.
#[derive(Clone)]
pub struct Subscription {
    core: Arc<Core>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("pattern", &self.core.pattern)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// How many messages it missed because its handler did not keep up.
    pub fn missed(&self) -> u64 {
        self.core.missed.load(Ordering::Relaxed)
    }

    /// Ends the subscription; its handler runs for nothing sent after this.
    pub fn unsubscribe(self) {
        self.core.stop();
    }
}

impl Store {
    /// Subscribes to `pattern` (a topic, or a glob over topics such as `"events.*"`);
    /// receive from the returned [`Subscriber`].
    ///
    /// # Errors
    ///
    /// An invalid pattern, too many subscriptions, a lost hub.
    pub fn subscriber<T: DeserializeOwned>(
        &self,
        pattern: &str,
    ) -> Result<Subscriber<T>, StoreError> {
        Ok(Subscriber {
            core: Arc::new(Core::start(self, pattern, None)?),
            handed_off: false,
            _t: std::marker::PhantomData,
        })
    }

    /// Async [`subscriber`](Store::subscriber).
    ///
    /// # Errors
    ///
    /// As [`subscriber`](Store::subscriber).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a subscription whose future is dropped is ended.
    pub async fn subscriber_async<T: DeserializeOwned>(
        &self,
        pattern: &str,
    ) -> Result<Subscriber<T>, StoreError> {
        Ok(Subscriber {
            core: Arc::new(Core::start_async(self, pattern, None).await?),
            handed_off: false,
            _t: std::marker::PhantomData,
        })
    }

    /// Subscribes to `pattern` and runs `handler` for every message, one at a time, in
    /// order, on the process's runtime. The handler may be sync or async, and may
    /// return `()` or a `Result`; a failure or a panic is logged and the next message
    /// is handled as usual. Messages that do not decode as `T` are logged and skipped.
    ///
    /// The message type is named once: on the handler's argument
    /// (`|e: Publication<String>|`), or with
    /// `store.subscriber::<String>(pattern)?.handle(handler)` (see
    /// [`Subscriber::handle`]), which does the same.
    ///
    /// # Errors
    ///
    /// As [`subscriber`](Store::subscriber).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn demo() -> Result<(), yukicomm_client::StoreError> {
    /// use yukicomm_client::store::Publication;
    /// let store = yukicomm_client::shared_memory();
    /// store.subscribe("events", |e: Publication<String>| async move {
    ///     println!("{} on {}", e.value, e.topic);
    /// })?;
    /// // The same, with the type named on the subscriber:
    /// store.subscriber::<String>("events")?.handle(|e| async move {
    ///     println!("{} on {}", e.value, e.topic);
    /// });
    /// # Ok(())
    /// # }
    /// ```
    pub fn subscribe<T, H, R, M>(
        &self,
        pattern: &str,
        handler: H,
    ) -> Result<Subscription, StoreError>
    where
        T: DeserializeOwned + Send + 'static,
        H: Fn(Publication<T>) -> R + Send + Sync + 'static,
        R: HandlerReturn<M>,
    {
        let core = Arc::new(Core::start(self, pattern, None)?);
        Ok(spawn_handler(core, handler))
    }

    /// Watches `key`: every set, delete and expiry of it is told to the returned
    /// [`Watch`].
    ///
    /// # Errors
    ///
    /// An invalid key, too many subscriptions, a lost hub.
    pub fn watch(&self, key: &str) -> Result<Watch, StoreError> {
        Ok(Watch {
            core: Core::start(self, key, Some(false))?,
        })
    }

    /// Async [`watch`](Store::watch).
    ///
    /// # Errors
    ///
    /// As [`watch`](Store::watch).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a watch whose future is dropped is ended.
    pub async fn watch_async(&self, key: &str) -> Result<Watch, StoreError> {
        Ok(Watch {
            core: Core::start_async(self, key, Some(false)).await?,
        })
    }

    /// Async [`watch_prefix`](Store::watch_prefix).
    ///
    /// # Errors
    ///
    /// As [`watch`](Store::watch).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a watch whose future is dropped is ended.
    pub async fn watch_prefix_async(&self, prefix: &str) -> Result<Watch, StoreError> {
        Ok(Watch {
            core: Core::start_async(self, prefix, Some(true)).await?,
        })
    }

    /// Watches every key that starts with `prefix` (`""` for every key).
    ///
    /// # Errors
    ///
    /// As [`watch`](Store::watch).
    pub fn watch_prefix(&self, prefix: &str) -> Result<Watch, StoreError> {
        Ok(Watch {
            core: Core::start(self, prefix, Some(true))?,
        })
    }
}
