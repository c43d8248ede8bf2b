//! Sharing a connection's read side between a background reader and receivers.
//!
//! Both ends of a connection are read the same way. A background reader thread normally
//! holds the *read role*: it waits in `poll` on the socket and on a wake-up pipe, and
//! hands over what it reads. A thread about to block waiting for its own message takes
//! the role instead and reads the socket itself, so that the message reaches it with no
//! thread hand-off. [`ReadRole`] is the coordination between them (the role itself is a
//! mutex owned by each side, around its read buffer):
//!
//! - a receiver that wants the role says so ([`ReadRole::want`]) and pokes whoever waits
//!   in `poll` ([`ReadRole::poke_if_polling`]), which then steps aside;
//! - after a receiver gives the role back ([`ReadRole::release`]), the background reader
//!   leaves it alone for [`LINGER`], since a receive loop comes back sooner, and naps
//!   longer and longer while receivers keep holding it, up to [`MAX_NAP`];
//! - a receiver that read a stream (more than [`BULK`] frames in one go) lets the
//!   background reader read on at once, in parallel with it.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::sys::{drain, pipe, poke};

/// How long the background reader leaves the role to receivers after one last gave it
/// back. Meanwhile nothing else reads: other receivers' messages wait at most this long.
pub const LINGER: Duration = Duration::from_micros(200);
/// The longest the background reader sleeps while a receiver holds the role: the most a
/// message for another receiver can wait once that receiver stops receiving.
pub const MAX_NAP: Duration = Duration::from_millis(20);
/// A receiver that handled more frames than this in one go was reading a stream.
pub const BULK: usize = 64;

/// The coordination state of one connection's read role. See the [module
/// documentation](self).
#[derive(Debug)]
pub struct ReadRole {
    /// Receivers that want the role.
    wanted: AtomicUsize,
    /// Set while the holder of the role waits in `poll`.
    polling: AtomicBool,
    /// Written to wake the holder from `poll`: `(read, write)`.
    wake: (OwnedFd, OwnedFd),
    /// The background reader sleeps here while receivers hold the role.
    idle: Mutex<()>,
    idle_cv: Condvar,
    /// When a receiver last gave the role back, in nanoseconds since `epoch`.
    released: AtomicU64,
    epoch: Instant,
}

impl ReadRole {
    /// Coordination for a new connection.
    ///
    /// # Errors
    ///
    /// If the wake-up pipe cannot be made.
    pub fn new() -> std::io::Result<ReadRole> {
        Ok(ReadRole {
            wanted: AtomicUsize::new(0),
            polling: AtomicBool::new(false),
            wake: pipe()?,
            idle: Mutex::new(()),
            idle_cv: Condvar::new(),
            released: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    /// The descriptor to poll, with the socket, while holding the role.
    pub fn wake_fd(&self) -> BorrowedFd<'_> {
        self.wake.0.as_fd()
    }

    /// Empties the wake-up pipe after `poll` reported it.
    pub fn drain_wakes(&self) {
        drain(&self.wake.0);
    }

    /// For the background reader, before it takes the role: `false` (after a nap) while
    /// receivers hold it or gave it back less than [`LINGER`] ago. `nap` is the reader's
    /// current nap, doubled while receivers keep the role.
    pub fn background_may_read(&self, nap: &mut Duration) -> bool {
        let since_release = (self.epoch.elapsed().as_nanos() as u64)
            .saturating_sub(self.released.load(Ordering::Acquire));
        let held = self.wanted.load(Ordering::SeqCst) > 0;
        if !held && since_release >= LINGER.as_nanos() as u64 {
            *nap = LINGER;
            return true;
        }
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self.idle_cv.wait_timeout(idle, *nap);
        if held {
            *nap = (*nap * 2).min(MAX_NAP);
        }
        false
    }

    /// For the holder of the role, before `poll`: marks it as waiting there. `false`
    /// (and not marked) if others want the role: give it up instead of waiting.
    /// `receivers_holding` is how many of the wanters are the holder itself (0 for the
    /// background reader, 1 for a receiver).
    pub fn start_polling(&self, receivers_holding: usize) -> bool {
        self.polling.store(true, Ordering::SeqCst);
        if self.wanted.load(Ordering::SeqCst) > receivers_holding {
            self.polling.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// For the holder of the role, after `poll`.
    pub fn stop_polling(&self) {
        self.polling.store(false, Ordering::SeqCst);
    }

    /// Whether receivers other than `receivers_holding` of them want the role.
    pub fn others_want(&self, receivers_holding: usize) -> bool {
        self.wanted.load(Ordering::SeqCst) > receivers_holding
    }

    /// A receiver wants the role.
    pub fn want(&self) {
        self.wanted.fetch_add(1, Ordering::SeqCst);
    }

    /// Wakes the holder of the role out of `poll`, if it waits there, so that it steps
    /// aside.
    pub fn poke_if_polling(&self) {
        if self.polling.load(Ordering::SeqCst) {
            poke(&self.wake.1);
        }
    }

    /// A receiver is done with the role, having handled `handled` frames: after a
    /// stream the background reader reads on at once, otherwise it lingers.
    pub fn release(&self, handled: usize) {
        if handled > BULK {
            self.released.store(0, Ordering::Release);
            self.idle_cv.notify_one();
        } else {
            self.released
                .store(self.epoch.elapsed().as_nanos() as u64, Ordering::Release);
        }
        self.wanted.fetch_sub(1, Ordering::SeqCst);
    }

    /// Lets the background reader read at once, without lingering: a receiver gave the
    /// role back while others still wait for what the connection brings.
    pub fn read_on(&self) {
        self.released.store(0, Ordering::Release);
        self.idle_cv.notify_one();
    }

    /// Wakes every party (the connection is closing).
    pub fn wake_all(&self) {
        poke(&self.wake.1);
        self.idle_cv.notify_all();
    }
}
