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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use futures::future::BoxFuture;
    use parking_lot::Mutex;
    use yukicomm_wire::store::{Delivery, Op, OpReply};
    use yukicomm_wire::{ChanId, End, EndRef, ErrorCode, Frame, Notice, Reply, Request};

    use crate::error::LinkError;
    use crate::store::{Store, StoreError, SubscriberError};
    use crate::transport::{Driver, EncodeFn, OpFuture, Pump, Transport, TransportError};

    /// A hub stand-in for store operations: it grants every subscription 8 deliveries,
    /// answers everything else `Done`, and records the subscription numbers it saw.
    #[derive(Default)]
    struct StoreHub {
        subs: Mutex<Vec<u32>>,
    }

    impl StoreHub {
        fn answer(&self, op: Op) -> OpReply {
            match op {
                Op::Subscribe { sub, .. } => {
                    self.subs.lock().push(sub);
                    OpReply::Int(8)
                }
                _ => OpReply::Done,
            }
        }
    }

    impl Transport for StoreHub {
        fn send_msg(&self, _: ChanId, _: End, _: EncodeFn<'_>) -> Result<(), TransportError> {
            Err(TransportError::Broken)
        }
        fn send_credit(&self, _: ChanId, _: End, _: u32, _: u64) {}
        fn notice(&self, _: Notice) {}
        fn request(&self, _: Request, _: Duration) -> Result<Reply, LinkError> {
            Err(LinkError::Disconnected)
        }
        fn pump(&self, _: EndRef, _: &dyn Fn() -> bool, _: Option<Instant>) -> Pump {
            Pump::Unavailable
        }
        fn request_async(
            &self,
            _: Request,
            _: Duration,
        ) -> BoxFuture<'static, Result<Reply, LinkError>> {
            Box::pin(async { Err(LinkError::Disconnected) })
        }
        fn store_call(&self, op: Op, _: Duration) -> Result<OpReply, LinkError> {
            Ok(self.answer(op))
        }
        fn store_call_async(&self, op: Op, _: Duration) -> OpFuture {
            OpFuture::ready(Ok(self.answer(op)))
        }
        fn store_send(&self, _: Op) -> Result<Option<OpReply>, LinkError> {
            Ok(None)
        }
        fn call(
            &self,
            _: crate::transport::CallHead<'_>,
            _: crate::transport::BodyFn<'_>,
            _: yukicomm_link::calls::Waiter<crate::transport::Answer>,
        ) -> Result<u32, TransportError> {
            Err(TransportError::Broken)
        }
        fn wait(
            &self,
            _: u32,
            _: &yukicomm_link::calls::Slot<crate::transport::Answer>,
            _: Instant,
        ) -> Result<crate::transport::Answer, LinkError> {
            Err(LinkError::Disconnected)
        }
        fn cancel(&self, _: u32) {}
        fn reply(
            &self,
            _: u32,
            _: yukicomm_wire::call::CallStatus,
            _: crate::transport::BodyFn<'_>,
            _: bool,
        ) -> Result<(), TransportError> {
            Err(TransportError::Broken)
        }
    }

    fn setup() -> (tokio::runtime::Runtime, Driver, Arc<StoreHub>, Store) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let driver = Driver::new(16, 1 << 20, rt.handle().clone(), Duration::from_secs(5));
        let hub = Arc::new(StoreHub::default());
        driver.set_transport(hub.clone());
        let store = Store::new(&driver.node());
        (rt, driver, hub, store)
    }

    fn message(sub: u32, text: &str) -> Frame {
        Frame::Delivery(Delivery::Message {
            sub,
            topic: Bytes::from_static(b"events"),
            body: Bytes::from(rmp_serde::to_vec_named(text).unwrap()),
        })
    }

    /// Deliveries the node hands over reach the subscription they name, through the
    /// sink the store registered; one for a subscription this process no longer has is
    /// dropped and disturbs nothing.
    #[test]
    fn deliveries_reach_their_subscription_through_the_store_sink() {
        let (_rt, driver, hub, store) = setup();
        let first = store.subscriber::<String>("events").unwrap();
        let gone = store.subscriber::<String>("events").unwrap();
        let subs = hub.subs.lock().clone();
        assert_eq!(subs.len(), 2);
        drop(gone);
        driver.dispatch_all(
            [
                message(subs[1], "for the dropped one"),
                message(subs[0], "hello"),
            ]
            .into_iter(),
        );
        let p = first.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!((p.topic.as_str(), p.value.as_str()), ("events", "hello"));
        assert_eq!(
            first.try_recv().unwrap_err(),
            SubscriberError::Empty {
                pattern: "events".into()
            }
        );
    }

    /// A failure of a write sent without waiting, which reaches the node as a reply
    /// nobody waits for, is reported by the next `flush`, once.
    #[test]
    fn a_failed_write_sent_without_waiting_is_reported_by_flush() {
        let (_rt, driver, _hub, store) = setup();
        store.set_nowait("k", &1).unwrap();
        driver.dispatch(Frame::OpReply {
            id: 7,
            reply: OpReply::Error {
                code: ErrorCode::Storage,
                message: "key \"k\": the journal is full".into(),
            },
        });
        assert_eq!(
            store.flush(),
            Err(StoreError::NowaitFailed {
                count: 1,
                first: "key \"k\": the journal is full".into()
            })
        );
        assert_eq!(store.flush(), Ok(()));
    }

    /// When the connection is lost, a subscriber waiting for a delivery is told so at
    /// once instead of waiting out its timeout.
    #[test]
    fn a_lost_connection_ends_every_subscription() {
        let (_rt, driver, _hub, store) = setup();
        let events = store.subscriber::<String>("events").unwrap();
        let lose = std::thread::spawn(move || driver.connection_lost());
        assert_eq!(
            events.recv_timeout(Duration::from_secs(10)).unwrap_err(),
            SubscriberError::Disconnected {
                pattern: "events".into()
            }
        );
        lose.join().unwrap();
    }
}
