//! The calls awaiting replies on one connection: one table, one id space, one way to
//! wait and one deadline mechanism, for every kind of call (registry requests, store
//! operations, and whatever comes next).
//!
//! A caller takes an id ([`Calls::next_id`]), registers how it waits ([`Waiter`]), sends
//! its frame with that id, and the connection's reader hands the answer over with
//! [`Calls::complete`]. A blocked thread waits in a [`Slot`] (and may read the
//! connection itself meanwhile); a task waits on a channel, and the connection's timer
//! thread ([`Calls::set_timer`]) fails it with [`CallError::Timeout`] once it is overdue
//! ([`Calls::expire`]), so that a call costs no timer of its own: the table knows its
//! earliest deadline and wakes that thread when a call with an earlier one arrives.
//! When the connection is lost, [`Calls::fail_all`] wakes every waiter.
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
use std::sync::{Arc, OnceLock};
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
    waiting: Mutex<Table<A>>,
    next: AtomicU32,
    /// The thread that calls [`Calls::expire`], woken for an earlier deadline.
    timer: OnceLock<Thread>,
}

#[derive(Debug)]
struct Table<A> {
    calls: FxHashMap<u32, Waiter<A>>,
    /// The earliest deadline of a task, if any waits.
    earliest: Option<Instant>,
}

impl<A> Default for Calls<A> {
    fn default() -> Self {
        Calls {
            waiting: Mutex::new(Table {
                calls: FxHashMap::default(),
                earliest: None,
            }),
            next: AtomicU32::new(1),
            timer: OnceLock::new(),
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

    /// Names the thread that calls [`Calls::expire`] when the earliest deadline comes
    /// (see [`Calls::expire`]); it is unparked when a task with an earlier deadline is
    /// inserted. Only the first call has an effect.
    pub fn set_timer(&self, thread: Thread) {
        let _ = self.timer.set(thread);
    }

    /// Registers how call `id` waits; returns how many calls wait now.
    pub fn insert(&self, id: u32, waiter: Waiter<A>) -> usize {
        let mut waiting = self.waiting.lock();
        let mut sooner = false;
        if let Waiter::Task(_, deadline) = &waiter {
            if waiting.earliest.is_none_or(|e| *deadline < e) {
                waiting.earliest = Some(*deadline);
                sooner = true;
            }
        }
        waiting.calls.insert(id, waiter);
        let n = waiting.calls.len();
        drop(waiting);
        if sooner {
            if let Some(t) = self.timer.get() {
                t.unpark();
            }
        }
        n
    }

    /// Forgets call `id` (given up, or never sent); whether it was waiting.
    pub fn remove(&self, id: u32) -> bool {
        self.waiting.lock().calls.remove(&id).is_some()
    }

    /// Hands `answer` to whoever waits for call `id`. Hands it back if nobody does (a
    /// call sent without waiting, or one given up).
    pub fn complete(&self, id: u32, answer: A) -> Option<A> {
        let waiter = self.waiting.lock().calls.remove(&id);
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

    /// Fails the tasks whose deadline is `now` or earlier with [`CallError::Timeout`];
    /// returns the earliest deadline left, for the timer thread to sleep until.
    pub fn expire(&self, now: Instant) -> Option<Instant> {
        let mut waiting = self.waiting.lock();
        if waiting.earliest.is_none_or(|e| e > now) {
            return waiting.earliest;
        }
        let mut earliest: Option<Instant> = None;
        let mut overdue = Vec::new();
        for (id, w) in &waiting.calls {
            if let Waiter::Task(_, d) = w {
                if *d <= now {
                    overdue.push(*id);
                } else if earliest.is_none_or(|e| *d < e) {
                    earliest = Some(*d);
                }
            }
        }
        waiting.earliest = earliest;
        let expired: Vec<Waiter<A>> = overdue
            .into_iter()
            .filter_map(|id| waiting.calls.remove(&id))
            .collect();
        drop(waiting);
        for w in expired {
            if let Waiter::Task(tx, _) = w {
                let _ = tx.send(Err(CallError::Timeout));
            }
        }
        earliest
    }

    /// The connection is lost: every waiter wakes without an answer (a task gets
    /// [`CallError::Disconnected`]; a thread finds its slot empty).
    pub fn fail_all(&self) {
        let waiters: Vec<Waiter<A>> = {
            let mut waiting = self.waiting.lock();
            waiting.earliest = None;
            waiting.calls.drain().map(|(_, w)| w).collect()
        };
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
        self.waiting.lock().calls.is_empty()
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
        assert_eq!(calls.expire(now), Some(now + Duration::from_secs(60)));
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
