//! The store's state in this process, registered on the node as the sink of the
//! store's frames ([`StoreSink`]).
//!
//! The node ([`crate::node`]) knows channel ends only. The store registers this sink
//! on it the first time a [`Store`](super::Store) is made for the node; the node then
//! hands it every frame it does not handle itself (subscription deliveries, and the
//! failures of writes sent without waiting) and tells it when the connection is lost.

use std::sync::atomic::{AtomicU32, Ordering};

use parking_lot::Mutex;
use yukicomm_wire::store::{Delivery, OpReply};
use yukicomm_wire::{ErrorCode, Frame};

use super::StoreError;
use crate::node::FrameSink;

/// A subscription's queue in this process, fed by [`StoreSink::frame`].
pub(crate) type SubQueue = flume::Sender<Delivery>;

/// This process's subscriptions and watches, and the failures of its writes sent
/// without waiting, for one node.
pub(crate) struct StoreSink {
    /// The queue of each subscription and watch, by number.
    subs: Mutex<rustc_hash::FxHashMap<u32, SubQueue>>,
    next_sub: AtomicU32,
    /// Failures of store writes sent without waiting.
    nowait_failures: Mutex<NowaitFailures>,
}

/// Failures of writes sent without waiting, kept until [`Store::flush`](super::Store::flush).
#[derive(Default)]
struct NowaitFailures {
    count: usize,
    first: Option<String>,
}

impl StoreSink {
    pub(crate) fn new() -> StoreSink {
        StoreSink {
            subs: Mutex::new(rustc_hash::FxHashMap::default()),
            next_sub: AtomicU32::new(1),
            nowait_failures: Mutex::new(NowaitFailures::default()),
        }
    }

    /// A new subscription number, with its queue; deliveries for it go to `tx`.
    pub(crate) fn add_sub(&self, tx: SubQueue) -> u32 {
        let sub = self.next_sub.fetch_add(1, Ordering::Relaxed);
        self.subs.lock().insert(sub, tx);
        sub
    }

    /// Drops the queue of subscription `sub`: what still comes for it is dropped.
    pub(crate) fn remove_sub(&self, sub: u32) {
        self.subs.lock().remove(&sub);
    }

    /// A write sent without waiting failed.
    pub(crate) fn failed(&self, code: ErrorCode, message: String) {
        tracing::warn!(
            ?code,
            "a store write sent without waiting failed: {message}"
        );
        let mut f = self.nowait_failures.lock();
        f.count += 1;
        f.first.get_or_insert(message);
    }

    /// The failures since the last call, as one error.
    pub(crate) fn take_failures(&self) -> Result<(), StoreError> {
        let f = std::mem::take(&mut *self.nowait_failures.lock());
        match f.first {
            None => Ok(()),
            Some(first) => Err(StoreError::NowaitFailed {
                count: f.count,
                first,
            }),
        }
    }
}

impl FrameSink for StoreSink {
    fn frame(&self, frame: Frame) -> Option<Frame> {
        match frame {
            Frame::Delivery(d) => {
                let sub = match &d {
                    Delivery::Message { sub, .. }
                    | Delivery::Missed { sub, .. }
                    | Delivery::Changed { sub, .. } => *sub,
                };
                // A delivery may cross an unsubscribe: then nobody wants it.
                if let Some(tx) = self.subs.lock().get(&sub) {
                    let _ = tx.send(d);
                }
                None
            }
            // A reply nobody waits for is that of a write sent without waiting, which
            // the hub answers only when it fails.
            Frame::OpReply {
                reply: OpReply::Error { code, message },
                ..
            } => {
                self.failed(code, message);
                None
            }
            other => Some(other),
        }
    }

    fn connection_lost(&self) {
        // Dropping the queues ends every receive with `Disconnected`.
        self.subs.lock().clear();
    }
}
