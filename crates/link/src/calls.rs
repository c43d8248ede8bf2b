//! The calls awaiting replies on one connection: one table, one id space, one way to
//! wait and one deadline mechanism, for every kind of call (registry requests, store
//! operations, and whatever comes next).
//!
//! A caller takes an id ([`Calls::next_id`]), registers how it waits ([`Waiter`]), sends
//! its frame with that id, and the connection's reader hands the answer over with
//! [`Calls::complete`]. A blocked thread waits in a [`Slot`] (and may read the
//! connection itself meanwhile); a task waits on a channel, and the connection's
//! housekeeping fails it with [`CallError::Timeout`] once it is overdue
//! ([`Calls::expire`]), so that a call costs no timer. When the connection is lost,
//! [`Calls::fail_all`] wakes every waiter.
//!
//! ```
//! use std::time::Duration;
//! use yukicomm_link::calls::{Calls, Slot, Waiter};
//!
//! let calls = Calls::<String>::default();
//! let slot = Slot::for_this_thread();
//! let id = calls.next_id();
//! calls.insert(id, Waiter::Thread(slot.clone()));
//! // ... the request goes out; the reader gets the reply:
//! assert!(calls.complete(id, "answer".to_string()).is_none());
//! assert_eq!(slot.take().as_deref(), Some("answer"));
//! ```

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::Thread;
use std::time::Instant;

use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use tokio::sync::oneshot;

/// Why a call got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// Its deadline passed first.
    #[error("no reply in time")]
    Timeout,
    /// The connection was lost.
    #[error("the connection is lost")]
    Disconnected,
}

/// Where a blocked thread's answer lands.
#[derive(Debug)]
pub struct Slot<A> {
    answer: Mutex<Option<A>>,
    thread: Thread,
}

impl<A> Slot<A> {
    /// A slot that wakes the calling thread.
    pub fn for_this_thread() -> Arc<Slot<A>> {
        Arc::new(Slot {
            answer: Mutex::new(None),
            thread: std::thread::current(),
        })
    }

    /// Takes the answer, if it came.
    pub fn take(&self) -> Option<A> {
        self.answer.lock().take()
    }

    /// Whether the answer came.
    pub fn is_ready(&self) -> bool {
        self.answer.lock().is_some()
    }
}

/// How a caller waits for its answer.
#[derive(Debug)]
pub enum Waiter<A> {
    /// A blocked thread: the answer goes into the slot and the thread is unparked.
    Thread(Arc<Slot<A>>),
    /// A task: the answer goes down the channel, or [`CallError::Timeout`] once the
    /// deadline has passed (see [`Calls::expire`]).
    Task(oneshot::Sender<Result<A, CallError>>, Instant),
}

/// The calls of one connection awaiting their answers. See the [module
/// documentation](self).
#[derive(Debug)]
pub struct Calls<A> {
    waiting: Mutex<FxHashMap<u32, Waiter<A>>>,
    next: AtomicU32,
}

impl<A> Default for Calls<A> {
    fn default() -> Self {
        Calls {
            waiting: Mutex::new(FxHashMap::default()),
            next: AtomicU32::new(1),
        }
    }
}

impl<A> Calls<A> {
    /// A fresh id (never 0).
    pub fn next_id(&self) -> u32 {
        loop {
            let id = self.next.fetch_add(1, Ordering::Relaxed);
            if id != 0 {
                return id;
            }
        }
    }

    /// Registers how call `id` waits; returns how many calls wait now.
    pub fn insert(&self, id: u32, waiter: Waiter<A>) -> usize {
        let mut waiting = self.waiting.lock();
        waiting.insert(id, waiter);
        waiting.len()
    }

    /// Forgets call `id` (given up, or never sent); whether it was waiting.
    pub fn remove(&self, id: u32) -> bool {
        self.waiting.lock().remove(&id).is_some()
    }

    /// Hands `answer` to whoever waits for call `id`. Hands it back if nobody does (a
    /// call sent without waiting, or one given up).
    pub fn complete(&self, id: u32, answer: A) -> Option<A> {
        let waiter = self.waiting.lock().remove(&id);
        match waiter {
            Some(Waiter::Thread(slot)) => {
                *slot.answer.lock() = Some(answer);
                slot.thread.unpark();
                None
            }
            Some(Waiter::Task(tx, _)) => {
                // A task that stopped waiting dropped its receiver: nothing to do.
                let _ = tx.send(Ok(answer));
                None
            }
            None => Some(answer),
        }
    }

    /// Fails the tasks whose deadline is `now` or earlier with [`CallError::Timeout`].
    pub fn expire(&self, now: Instant) {
        let mut waiting = self.waiting.lock();
        let overdue: Vec<u32> = waiting
            .iter()
            .filter(|(_, w)| matches!(w, Waiter::Task(_, d) if *d <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in overdue {
            if let Some(Waiter::Task(tx, _)) = waiting.remove(&id) {
                let _ = tx.send(Err(CallError::Timeout));
            }
        }
    }

    /// The connection is lost: every waiter wakes without an answer (a task gets
    /// [`CallError::Disconnected`]; a thread finds its slot empty).
    pub fn fail_all(&self) {
        let waiters: Vec<Waiter<A>> = self.waiting.lock().drain().map(|(_, w)| w).collect();
        for w in waiters {
            match w {
                Waiter::Thread(slot) => slot.thread.unpark(),
                Waiter::Task(tx, _) => {
                    let _ = tx.send(Err(CallError::Disconnected));
                }
            }
        }
    }

    /// Whether no call waits.
    pub fn is_empty(&self) -> bool {
        self.waiting.lock().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn each_answer_reaches_its_own_caller_once() {
        let calls = Calls::<u32>::default();
        let slot = Slot::for_this_thread();
        let (tx, mut rx) = oneshot::channel();
        let a = calls.next_id();
        let b = calls.next_id();
        assert_ne!(a, b);
        calls.insert(a, Waiter::Thread(slot.clone()));
        calls.insert(
            b,
            Waiter::Task(tx, Instant::now() + Duration::from_secs(60)),
        );
        assert_eq!(calls.complete(b, 2), None);
        assert_eq!(calls.complete(a, 1), None);
        assert_eq!(slot.take(), Some(1));
        assert_eq!(rx.try_recv().unwrap(), Ok(2));
        // A late or unknown answer is handed back, never given to another call.
        assert_eq!(calls.complete(a, 3), Some(3));
        assert!(calls.is_empty());
    }

    #[test]
    fn overdue_tasks_time_out_and_a_lost_connection_fails_everyone() {
        let calls = Calls::<u32>::default();
        let now = Instant::now();
        let (tx1, mut rx1) = oneshot::channel();
        let (tx2, mut rx2) = oneshot::channel();
        calls.insert(1, Waiter::Task(tx1, now));
        calls.insert(2, Waiter::Task(tx2, now + Duration::from_secs(60)));
        calls.expire(now);
        assert_eq!(rx1.try_recv().unwrap(), Err(CallError::Timeout));
        assert!(rx2.try_recv().is_err(), "not due yet");
        let slot = Slot::for_this_thread();
        calls.insert(3, Waiter::Thread(slot.clone()));
        calls.fail_all();
        assert_eq!(rx2.try_recv().unwrap(), Err(CallError::Disconnected));
        assert!(!slot.is_ready());
        assert!(calls.is_empty());
    }
}
