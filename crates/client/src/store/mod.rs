//! [`Store`]: the shared key-value store and publish/subscribe, the same from every
//! process.
//!
//! The store lives in the hub, in the main process. Each operation here is one request
//! to it: over the hub connection in a child, a direct call in the main process. A write
//! returns once the hub has applied it, so a read that starts after it returned (in any
//! process, on any thread) sees it. Many requests may be in flight at once on one
//! connection: threads and tasks do not wait for each other's round trips.
//!
//! A blocking call in a child waits for its reply by reading the connection itself,
//! polling it for up to 50 µs before it sleeps (a reply usually comes sooner, and a
//! thread that stays on its core takes it without a wake-up); it stops polling first
//! while replies take longer, and never polls on a single processor. An async call made
//! while more than 16 others await replies leaves its request to the connection's
//! flusher, so that the requests of many tasks share one write.
//!
//! The store's state in this process (the queues of its subscriptions and watches, the
//! failures of writes sent without waiting) lives in a sink it registers on the node
//! (`store/sink.rs`): the node hands it the frames that are the store's, and knows
//! nothing of the store itself.
//!
//! Values are any `serde` type, stored as MessagePack; reading one back as a type it does
//! not decode as is a [`StoreError::Decode`] naming the key and the type.
//!
//! # Examples
//!
//! ```no_run
//! # fn demo() -> Result<(), yukicomm_client::StoreError> {
//! let store = yukicomm_client::shared_memory();
//! store.set("greeting", &"hello")?;
//! let v: Option<String> = store.get("greeting")?;
//! assert_eq!(v.as_deref(), Some("hello"));
//! assert_eq!(store.incr("visits", 1)?, 1);
//! # Ok(())
//! # }
//! ```

mod sink;
mod subscribe;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::RwLock;
use serde::de::DeserializeOwned;
use serde::Serialize;
use yukicomm_wire::store::{Op, OpReply};
use yukicomm_wire::ErrorCode;

pub use subscribe::{Change, Publication, Subscriber, SubscriberError, Subscription, Watch};
pub use yukicomm_wire::store::ChangeKind;

use crate::error::LinkError;
use crate::node::Node;
use sink::StoreSink;

/// The store `shared_memory()` reaches: set when this process joins a program.
static CURRENT: RwLock<Option<Store>> = RwLock::new(None);

pub(crate) fn set_current(node: &Node) {
    *CURRENT.write() = Some(Store::new(node));
}

#[doc(hidden)]
/// Used by the supervisor: the main process's node becomes the one `shared_memory()`
/// reaches.
pub fn set_process_node(node: &Node) {
    set_current(node);
}

/// The shared store of the yukicomm program this process belongs to: the same call in
/// the main process and in any child.
///
/// Before the process has joined a program (a child before `connect`, a main process
/// before `App::run`), every operation fails with [`StoreError::NotConnected`]. A
/// process that runs several `App`s one after another (or at once, as a test binary
/// may) reaches the store of the one started last; `ctx.store()` names its hub
/// explicitly.
pub fn shared_memory() -> Store {
    CURRENT.read().clone().unwrap_or(Store { link: None })
}

/// A handle on the shared store. Cheap to clone; every clone reaches the same store.
#[derive(Clone)]
pub struct Store {
    link: Option<Link>,
}

/// A store reached through a node: the node's transport carries the operations, the
/// sink registered on it gets the deliveries.
#[derive(Clone)]
struct Link {
    node: Node,
    sink: Arc<StoreSink>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("connected", &self.link.is_some())
            .finish()
    }
}

/// Why a store operation failed. Every message names the key (or topic) concerned.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// This process has not joined a yukicomm program.
    #[error("this process is not part of a yukicomm program")]
    NotConnected,
    /// The key (or topic, or pattern) is empty, too long or otherwise invalid.
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey {
        /// The key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The value (or message) is larger than the store accepts.
    #[error("key {key:?}: {reason}")]
    TooLarge {
        /// The key or topic.
        key: String,
        /// The sizes.
        reason: String,
    },
    /// The value could not be encoded as MessagePack.
    #[error("key {key:?}: cannot encode {type_name}: {reason}")]
    Encode {
        /// The key or topic.
        key: String,
        /// The value's type.
        type_name: &'static str,
        /// The encoder's message.
        reason: String,
    },
    /// The stored value does not decode as the type asked for.
    #[error("key {key:?}: the stored value does not decode as {type_name}: {reason}")]
    Decode {
        /// The key.
        key: String,
        /// The type asked for.
        type_name: &'static str,
        /// The decoder's message.
        reason: String,
    },
    /// `incr` on a value that is not an integer.
    #[error("key {key:?} does not hold an integer")]
    NotAnInteger {
        /// The key.
        key: String,
    },
    /// `incr` would overflow an `i64`.
    #[error("key {key:?}: {reason}")]
    Overflow {
        /// The key.
        key: String,
        /// The values involved.
        reason: String,
    },
    /// The hub could not write the store's journal; the write is not durable.
    #[error("key {key:?}: {reason}")]
    Storage {
        /// The key.
        key: String,
        /// The hub's explanation.
        reason: String,
    },
    /// The hub refused for another reason.
    #[error("key {key:?}: the hub refused: {message}")]
    Refused {
        /// The key or topic.
        key: String,
        /// The hub's reason code.
        code: ErrorCode,
        /// The hub's explanation.
        message: String,
    },
    /// The hub did not answer in time.
    #[error("key {key:?}: the hub did not answer in time")]
    Timeout {
        /// The key or topic.
        key: String,
    },
    /// The hub connection is gone.
    #[error("key {key:?}: the hub connection is closed")]
    Disconnected {
        /// The key or topic.
        key: String,
    },
    /// Writes sent with [`Store::set_nowait`] failed; reported by [`Store::flush`].
    #[error("{count} write(s) sent without waiting failed; the first: {first}")]
    NowaitFailed {
        /// How many failed since the last `flush`.
        count: usize,
        /// The hub's message for the first of them.
        first: String,
    },
}

impl StoreError {
    fn from_reply(key: &str, code: ErrorCode, message: String) -> StoreError {
        let key = key.to_string();
        match code {
            ErrorCode::InvalidKey => StoreError::InvalidKey {
                key,
                reason: message,
            },
            ErrorCode::TooLarge => StoreError::TooLarge {
                key,
                reason: message,
            },
            ErrorCode::NotAnInteger => StoreError::NotAnInteger { key },
            ErrorCode::Overflow => StoreError::Overflow {
                key,
                reason: message,
            },
            ErrorCode::Storage => StoreError::Storage {
                key,
                reason: message,
            },
            code => StoreError::Refused { key, code, message },
        }
    }

    fn link(key: &str, e: LinkError) -> StoreError {
        match e {
            LinkError::Disconnected => StoreError::Disconnected {
                key: key.to_string(),
            },
            LinkError::Timeout => StoreError::Timeout {
                key: key.to_string(),
            },
            e @ LinkError::TooLarge { .. } => StoreError::TooLarge {
                key: key.to_string(),
                reason: e.to_string(),
            },
        }
    }
}

/// How long a key has left to live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    /// The key does not exist.
    NoKey,
    /// The key never expires.
    Forever,
    /// The key expires after this.
    Remaining(Duration),
}

/// A value as stored, read by [`Store::get_all`]: decode it as the type it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredValue {
    key: String,
    bytes: Bytes,
}

impl StoredValue {
    /// Decodes the value.
    ///
    /// # Errors
    ///
    /// [`StoreError::Decode`] if it does not decode as `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, StoreError> {
        decode(&self.key, &self.bytes)
    }

    /// The MessagePack bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    rmp_serde::from_slice(bytes).map_err(|e| StoreError::Decode {
        key: key.to_string(),
        type_name: std::any::type_name::<T>(),
        reason: e.to_string(),
    })
}

fn encode<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<Bytes, StoreError> {
    let mut buf = Vec::with_capacity(64);
    rmp_serde::encode::write_named(&mut buf, value).map_err(|e| StoreError::Encode {
        key: key.to_string(),
        type_name: std::any::type_name::<T>(),
        reason: e.to_string(),
    })?;
    Ok(Bytes::from(buf))
}

fn key_bytes(key: &str) -> Result<Bytes, StoreError> {
    if key.is_empty() {
        return Err(StoreError::InvalidKey {
            key: String::new(),
            reason: "empty key".into(),
        });
    }
    if key.len() > u16::MAX as usize {
        return Err(StoreError::InvalidKey {
            key: format!("{}...", key.chars().take(32).collect::<String>()),
            reason: format!("{} bytes is longer than any key can be", key.len()),
        });
    }
    Ok(Bytes::copy_from_slice(key.as_bytes()))
}

fn unexpected(key: &str, reply: OpReply) -> StoreError {
    StoreError::Refused {
        key: key.to_string(),
        code: ErrorCode::BadRequest,
        message: format!("unexpected reply {reply:?}"),
    }
}

macro_rules! expect {
    ($key:expr, $reply:expr, $($pat:pat => $val:expr),+ $(,)?) => {
        match $reply {
            $($pat => Ok($val),)+
            OpReply::Error { code, message } => Err(StoreError::from_reply($key, code, message)),
            other => Err(unexpected($key, other)),
        }
    };
}

impl Store {
    /// The store reached through `node`.
    pub fn new(node: &Node) -> Store {
        Store {
            link: Some(Link {
                node: node.clone(),
                sink: node.sink(StoreSink::new),
            }),
        }
    }

    fn link(&self) -> Result<&Link, StoreError> {
        self.link.as_ref().ok_or(StoreError::NotConnected)
    }

    fn node(&self) -> Result<&Node, StoreError> {
        Ok(&self.link()?.node)
    }

    fn call(&self, key: &str, op: Op) -> Result<OpReply, StoreError> {
        let node = self.node()?;
        let t = node.transport().map_err(|e| StoreError::link(key, e))?;
        t.store_call(op, node.inner.request_timeout)
            .map_err(|e| StoreError::link(key, e))
    }

    async fn call_async(&self, key: &str, op: Op) -> Result<OpReply, StoreError> {
        let node = self.node()?;
        let t = node.transport().map_err(|e| StoreError::link(key, e))?;
        t.store_call_async(op, node.inner.request_timeout)
            .await
            .map_err(|e| StoreError::link(key, e))
    }

    /// Stores `value` at `key`, replacing any value (and its expiry).
    ///
    /// # Errors
    ///
    /// An invalid key, a value that does not encode or exceeds the limit, a journal
    /// failure, or a lost hub.
    pub fn set<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        let op = set_op(key, value, None, false)?;
        expect!(key, self.call(key, op)?, OpReply::Done => ())
    }

    /// Async [`set`](Store::set).
    ///
    /// # Errors
    ///
    /// As [`set`](Store::set).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future after the request left may still apply the write.
    pub async fn set_async<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let op = set_op(key, value, None, false)?;
        expect!(key, self.call_async(key, op).await?, OpReply::Done => ())
    }

    /// Stores `value` at `key` without waiting for the hub. A failure is not lost: it
    /// is logged, and [`flush`](Store::flush) reports it. Writes of one process apply
    /// in the order it sent them.
    ///
    /// # Errors
    ///
    /// Only what is known before sending: an invalid key, a value that does not encode,
    /// a lost hub.
    pub fn set_nowait<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let op = set_op(key, value, None, false)?;
        let link = self.link()?;
        let t = link
            .node
            .transport()
            .map_err(|e| StoreError::link(key, e))?;
        let sent = t.store_send(op).map_err(|e| StoreError::link(key, e))?;
        if let Some(OpReply::Error { code, message }) = sent {
            link.sink.failed(code, message);
        }
        Ok(())
    }

    /// Waits until every write this process sent with [`set_nowait`](Store::set_nowait)
    /// is applied, and reports those that failed since the last `flush`.
    ///
    /// # Errors
    ///
    /// [`StoreError::NowaitFailed`] with the count and the first failure, or a lost
    /// hub.
    pub fn flush(&self) -> Result<(), StoreError> {
        expect!("", self.call("", Op::Sync)?, OpReply::Done => ())?;
        self.link()?.sink.take_failures()
    }

    /// Stores `value` at `key` for `ttl`; then the key disappears.
    ///
    /// # Errors
    ///
    /// As [`set`](Store::set).
    pub fn set_with_ttl<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let op = set_op(key, value, Some(ttl), false)?;
        expect!(key, self.call(key, op)?, OpReply::Done => ())
    }

    /// Async [`set_with_ttl`](Store::set_with_ttl).
    ///
    /// # Errors
    ///
    /// As [`set`](Store::set).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future after the request left may still apply the write.
    pub async fn set_with_ttl_async<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let op = set_op(key, value, Some(ttl), false)?;
        expect!(key, self.call_async(key, op).await?, OpReply::Done => ())
    }

    /// Stores `value` only if `key` has no value; returns whether it did.
    ///
    /// # Errors
    ///
    /// As [`set`](Store::set).
    pub fn set_if_absent<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<bool, StoreError> {
        let op = set_op(key, value, None, true)?;
        expect!(key, self.call(key, op)?, OpReply::Bool(b) => b)
    }

    /// Async [`set_if_absent`](Store::set_if_absent).
    ///
    /// # Errors
    ///
    /// As [`set`](Store::set).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future after the request left may still apply the write.
    pub async fn set_if_absent_async<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<bool, StoreError> {
        let op = set_op(key, value, None, true)?;
        expect!(key, self.call_async(key, op).await?, OpReply::Bool(b) => b)
    }

    /// The value at `key`, if any.
    ///
    /// # Errors
    ///
    /// [`StoreError::Decode`] if the value is not a `T`; an invalid key; a lost hub.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        let op = Op::Get {
            key: key_bytes(key)?,
        };
        expect!(key, self.call(key, op)?,
            OpReply::Value(v) => Some(decode(key, &v)?),
            OpReply::Nil => None)
    }

    /// Async [`get`](Store::get).
    ///
    /// # Errors
    ///
    /// As [`get`](Store::get).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a read changes nothing.
    pub async fn get_async<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        let op = Op::Get {
            key: key_bytes(key)?,
        };
        expect!(key, self.call_async(key, op).await?,
            OpReply::Value(v) => Some(decode(key, &v)?),
            OpReply::Nil => None)
    }

    /// The value at `key`, or `default` if it has none.
    ///
    /// # Errors
    ///
    /// As [`get`](Store::get).
    pub fn get_or<T: DeserializeOwned>(&self, key: &str, default: T) -> Result<T, StoreError> {
        Ok(self.get(key)?.unwrap_or(default))
    }

    /// Async [`get_or`](Store::get_or).
    ///
    /// # Errors
    ///
    /// As [`get`](Store::get).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn get_or_async<T: DeserializeOwned>(
        &self,
        key: &str,
        default: T,
    ) -> Result<T, StoreError> {
        Ok(self.get_async(key).await?.unwrap_or(default))
    }

    /// Removes `key`; returns whether it existed.
    ///
    /// # Errors
    ///
    /// An invalid key, a journal failure, a lost hub.
    pub fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let op = Op::Delete {
            key: key_bytes(key)?,
        };
        expect!(key, self.call(key, op)?, OpReply::Bool(b) => b)
    }

    /// Async [`delete`](Store::delete).
    ///
    /// # Errors
    ///
    /// As [`delete`](Store::delete).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future after the request left may still delete the key.
    pub async fn delete_async(&self, key: &str) -> Result<bool, StoreError> {
        let op = Op::Delete {
            key: key_bytes(key)?,
        };
        expect!(key, self.call_async(key, op).await?, OpReply::Bool(b) => b)
    }

    /// Whether `key` has a value.
    ///
    /// # Errors
    ///
    /// An invalid key, a lost hub.
    pub fn contains(&self, key: &str) -> Result<bool, StoreError> {
        let op = Op::Contains {
            key: key_bytes(key)?,
        };
        expect!(key, self.call(key, op)?, OpReply::Bool(b) => b)
    }

    /// Async [`contains`](Store::contains).
    ///
    /// # Errors
    ///
    /// As [`contains`](Store::contains).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn contains_async(&self, key: &str) -> Result<bool, StoreError> {
        let op = Op::Contains {
            key: key_bytes(key)?,
        };
        expect!(key, self.call_async(key, op).await?, OpReply::Bool(b) => b)
    }

    /// Every key with its value.
    ///
    /// # Errors
    ///
    /// A lost hub.
    pub fn get_all(&self) -> Result<BTreeMap<String, StoredValue>, StoreError> {
        self.get_matching("*")
    }

    /// Every key matching the glob `pattern` (`*` any run of characters, `?` one; a
    /// pattern without them is an exact key), with its value.
    ///
    /// # Errors
    ///
    /// An invalid pattern, a lost hub.
    pub fn get_matching(&self, pattern: &str) -> Result<BTreeMap<String, StoredValue>, StoreError> {
        let op = Op::GetAll {
            pattern: key_bytes(pattern)?,
        };
        expect!(pattern, self.call(pattern, op)?, OpReply::Entries(e) => entries(e))
    }

    /// Async [`get_all`](Store::get_all).
    ///
    /// # Errors
    ///
    /// A lost hub.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn get_all_async(&self) -> Result<BTreeMap<String, StoredValue>, StoreError> {
        let op = Op::GetAll {
            pattern: Bytes::from_static(b"*"),
        };
        expect!("*", self.call_async("*", op).await?, OpReply::Entries(e) => entries(e))
    }

    /// The keys matching the glob `pattern` (`"user:*"`, `"*"` for all), sorted.
    ///
    /// # Errors
    ///
    /// An invalid pattern, a lost hub.
    pub fn keys(&self, pattern: &str) -> Result<Vec<String>, StoreError> {
        let op = Op::Keys {
            pattern: key_bytes(pattern)?,
        };
        expect!(pattern, self.call(pattern, op)?, OpReply::Keys(k) => k)
    }

    /// Async [`keys`](Store::keys).
    ///
    /// # Errors
    ///
    /// As [`keys`](Store::keys).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn keys_async(&self, pattern: &str) -> Result<Vec<String>, StoreError> {
        let op = Op::Keys {
            pattern: key_bytes(pattern)?,
        };
        expect!(pattern, self.call_async(pattern, op).await?, OpReply::Keys(k) => k)
    }

    /// The number of keys.
    ///
    /// # Errors
    ///
    /// A lost hub.
    pub fn len(&self) -> Result<usize, StoreError> {
        expect!("", self.call("", Op::Len)?, OpReply::Int(n) => n.max(0) as usize)
    }

    /// Whether the store has no keys.
    ///
    /// # Errors
    ///
    /// A lost hub.
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len()? == 0)
    }

    /// Async [`len`](Store::len).
    ///
    /// # Errors
    ///
    /// A lost hub.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn len_async(&self) -> Result<usize, StoreError> {
        expect!("", self.call_async("", Op::Len).await?, OpReply::Int(n) => n.max(0) as usize)
    }

    /// Adds `by` to the integer at `key`, atomically; a missing key counts as 0.
    /// Returns the new value. The key keeps its expiry.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotAnInteger`], [`StoreError::Overflow`], an invalid key, a lost
    /// hub.
    pub fn incr(&self, key: &str, by: i64) -> Result<i64, StoreError> {
        let op = Op::Incr {
            key: key_bytes(key)?,
            by,
        };
        expect!(key, self.call(key, op)?, OpReply::Int(n) => n)
    }

    /// Async [`incr`](Store::incr).
    ///
    /// # Errors
    ///
    /// As [`incr`](Store::incr).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future after the request left may still apply the increment.
    pub async fn incr_async(&self, key: &str, by: i64) -> Result<i64, StoreError> {
        let op = Op::Incr {
            key: key_bytes(key)?,
            by,
        };
        expect!(key, self.call_async(key, op).await?, OpReply::Int(n) => n)
    }

    /// Subtracts `by` from the integer at `key`: `incr(key, -by)`.
    ///
    /// # Errors
    ///
    /// As [`incr`](Store::incr).
    pub fn decr(&self, key: &str, by: i64) -> Result<i64, StoreError> {
        let by = by.checked_neg().ok_or_else(|| StoreError::Overflow {
            key: key.to_string(),
            reason: format!("cannot subtract {by}"),
        })?;
        self.incr(key, by)
    }

    /// Async [`decr`](Store::decr).
    ///
    /// # Errors
    ///
    /// As [`incr`](Store::incr).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future after the request left may still apply the decrement.
    pub async fn decr_async(&self, key: &str, by: i64) -> Result<i64, StoreError> {
        let by = by.checked_neg().ok_or_else(|| StoreError::Overflow {
            key: key.to_string(),
            reason: format!("cannot subtract {by}"),
        })?;
        self.incr_async(key, by).await
    }

    /// Replaces the value at `key` with `new` (`None` deletes it) if the current value
    /// equals `expected` (`None`: if the key has no value), atomically. Values are
    /// compared as encoded, so compare values of the same type. Returns whether it
    /// swapped. A swapped-in value has no expiry.
    ///
    /// # Errors
    ///
    /// An invalid key, a value that does not encode, a lost hub.
    pub fn compare_and_swap<T: Serialize + ?Sized>(
        &self,
        key: &str,
        expected: Option<&T>,
        new: Option<&T>,
    ) -> Result<bool, StoreError> {
        let op = cas_op(key, expected, new)?;
        expect!(key, self.call(key, op)?, OpReply::Bool(b) => b)
    }

    /// Async [`compare_and_swap`](Store::compare_and_swap).
    ///
    /// # Errors
    ///
    /// As [`compare_and_swap`](Store::compare_and_swap).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future after the request left may still swap.
    pub async fn compare_and_swap_async<T: Serialize + ?Sized>(
        &self,
        key: &str,
        expected: Option<&T>,
        new: Option<&T>,
    ) -> Result<bool, StoreError> {
        let op = cas_op(key, expected, new)?;
        expect!(key, self.call_async(key, op).await?, OpReply::Bool(b) => b)
    }

    /// Makes `key` expire after `ttl` (`None`: never). Returns whether the key exists.
    ///
    /// # Errors
    ///
    /// An invalid key, a lost hub.
    pub fn expire(&self, key: &str, ttl: Option<Duration>) -> Result<bool, StoreError> {
        let op = Op::Expire {
            key: key_bytes(key)?,
            ttl_ms: ttl.map(ttl_ms),
        };
        expect!(key, self.call(key, op)?, OpReply::Bool(b) => b)
    }

    /// Async [`expire`](Store::expire).
    ///
    /// # Errors
    ///
    /// As [`expire`](Store::expire).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future after the request left may still change the expiry.
    pub async fn expire_async(&self, key: &str, ttl: Option<Duration>) -> Result<bool, StoreError> {
        let op = Op::Expire {
            key: key_bytes(key)?,
            ttl_ms: ttl.map(ttl_ms),
        };
        expect!(key, self.call_async(key, op).await?, OpReply::Bool(b) => b)
    }

    /// How long `key` has left to live.
    ///
    /// # Errors
    ///
    /// An invalid key, a lost hub.
    pub fn ttl(&self, key: &str) -> Result<Ttl, StoreError> {
        let op = Op::Ttl {
            key: key_bytes(key)?,
        };
        expect!(key, self.call(key, op)?, OpReply::Int(n) => to_ttl(n))
    }

    /// Async [`ttl`](Store::ttl).
    ///
    /// # Errors
    ///
    /// As [`ttl`](Store::ttl).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn ttl_async(&self, key: &str) -> Result<Ttl, StoreError> {
        let op = Op::Ttl {
            key: key_bytes(key)?,
        };
        expect!(key, self.call_async(key, op).await?, OpReply::Int(n) => to_ttl(n))
    }

    /// Publishes `message` to every subscription whose pattern matches `topic`, in any
    /// process. Returns how many subscriptions it was given to (a subscription whose
    /// buffer is full misses it and is not counted). Publishing to a topic nobody
    /// listens to is fine.
    ///
    /// # Errors
    ///
    /// An invalid topic, a message that does not encode or exceeds the limit, a lost
    /// hub.
    pub fn publish<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        message: &T,
    ) -> Result<usize, StoreError> {
        let op = Op::Publish {
            topic: key_bytes(topic)?,
            body: encode(topic, message)?,
        };
        expect!(topic, self.call(topic, op)?, OpReply::Int(n) => n.max(0) as usize)
    }

    /// Async [`publish`](Store::publish).
    ///
    /// # Errors
    ///
    /// As [`publish`](Store::publish).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future after the request left may still publish.
    pub async fn publish_async<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        message: &T,
    ) -> Result<usize, StoreError> {
        let op = Op::Publish {
            topic: key_bytes(topic)?,
            body: encode(topic, message)?,
        };
        expect!(topic, self.call_async(topic, op).await?, OpReply::Int(n) => n.max(0) as usize)
    }

    /// Publishes `messages` to `topic` in order, in one request: like calling
    /// [`publish`](Store::publish) for each, without waiting for the hub between them.
    /// Returns how many subscriptions they were given to in all. If one message does not
    /// encode or exceeds the limit, none is published.
    ///
    /// # Errors
    ///
    /// As [`publish`](Store::publish).
    pub fn publish_many<I>(&self, topic: &str, messages: I) -> Result<usize, StoreError>
    where
        I: IntoIterator,
        I::Item: Serialize,
    {
        let op = publish_many_op(topic, messages)?;
        expect!(topic, self.call(topic, op)?, OpReply::Int(n) => n.max(0) as usize)
    }

    /// Async [`publish_many`](Store::publish_many).
    ///
    /// # Errors
    ///
    /// As [`publish`](Store::publish).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future after the request left may still publish.
    pub async fn publish_many_async<I>(&self, topic: &str, messages: I) -> Result<usize, StoreError>
    where
        I: IntoIterator,
        I::Item: Serialize,
    {
        let op = publish_many_op(topic, messages)?;
        expect!(topic, self.call_async(topic, op).await?, OpReply::Int(n) => n.max(0) as usize)
    }
}

fn publish_many_op<I>(topic: &str, messages: I) -> Result<Op, StoreError>
where
    I: IntoIterator,
    I::Item: Serialize,
{
    Ok(Op::PublishMany {
        topic: key_bytes(topic)?,
        bodies: messages
            .into_iter()
            .map(|m| encode(topic, &m))
            .collect::<Result<_, _>>()?,
    })
}

fn set_op<T: Serialize + ?Sized>(
    key: &str,
    value: &T,
    ttl: Option<Duration>,
    if_absent: bool,
) -> Result<Op, StoreError> {
    Ok(Op::Set {
        key: key_bytes(key)?,
        value: encode(key, value)?,
        ttl_ms: ttl.map(ttl_ms),
        if_absent,
    })
}

fn cas_op<T: Serialize + ?Sized>(
    key: &str,
    expected: Option<&T>,
    new: Option<&T>,
) -> Result<Op, StoreError> {
    Ok(Op::Cas {
        key: key_bytes(key)?,
        expected: expected.map(|v| encode(key, v)).transpose()?,
        new: new.map(|v| encode(key, v)).transpose()?,
    })
}

fn ttl_ms(d: Duration) -> u64 {
    // u64::MAX means "no expiry" on the wire.
    (d.as_millis() as u64).min(u64::MAX - 1)
}

fn to_ttl(n: i64) -> Ttl {
    match n {
        -2 => Ttl::NoKey,
        n if n < 0 => Ttl::Forever,
        n => Ttl::Remaining(Duration::from_millis(n as u64)),
    }
}

fn entries(e: Vec<(String, Bytes)>) -> BTreeMap<String, StoredValue> {
    e.into_iter()
        .map(|(key, bytes)| (key.clone(), StoredValue { key, bytes }))
        .collect()
}

impl Node {
    /// The shared store, reached through this process's connection.
    pub fn store(&self) -> Store {
        Store::new(self)
    }
}
