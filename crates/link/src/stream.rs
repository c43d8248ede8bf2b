//! The byte stream under a connection: a Unix socket, or rings in shared memory beside it.
//!
//! Every connection starts on its Unix socket. Two processes on one machine may then
//! move its bytes into a shared-memory [`Region`] instead ([`Stream::use_shm`], once,
//! before any frame flows that way): from then on the frames travel through the rings,
//! and the socket only carries wake-ups (single bytes, with no meaning beyond "look at
//! the rings") and tells when the other process is gone. The engine reads and writes a
//! [`Stream`] the same way in both cases:
//!
//! - before it waits in `poll` on [`Stream::socket`], it asks [`Stream::before_wait`]
//!   (which, on rings, tells the other side that this one is going to sleep, or finds
//!   that there is something to read after all), and calls [`Stream::after_wait`] after
//!   a wait it did;
//! - [`Stream::read_into`] reads what there is, `WouldBlock` when nothing;
//! - writes never block; `WouldBlock` when the socket or the ring is full, and then the
//!   writer waits for room ([`Stream::wait_room`], [`Stream::wait_room_async`]). On
//!   rings it waits on an `eventfd` of its own, which the reader on the other side
//!   signals when it frees room while the writer waits ([`Rooms`]): the wake-ups on the
//!   socket are for readers only, so a writer never depends on whoever reads.
//!
//! A ring that the other process corrupts is an error of this connection only
//! ([`ShmError::Corrupt`](crate::shm::ShmError), as `InvalidData`).

use std::io::{self, ErrorKind, IoSlice};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use parking_lot::Mutex;
#[cfg(target_os = "linux")]
use rustix::event::{eventfd, EventfdFlags};
use rustix::net::{RecvFlags, SendFlags};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::shm::{Consumer, Producer, Region, Side};
use crate::sys::{pollfd, wait_readable};

/// Watches in a row that find nothing before the next waits skip watching (see
/// [`Stream::set_spin`]).
pub const MISSES_BEFORE_SKIP: u32 = 4;

/// The most waits in a row that skip watching the ring after watches found nothing
/// (see [`Stream::set_spin`]).
pub const MAX_SKIP: u32 = 64;

/// The shortest window a busy-polling reader watches its ring between two looks at the
/// socket (see [`Stream::set_spin`]).
pub const BUSY_POLL_WINDOW: Duration = Duration::from_micros(100);

/// The longest a writer that found the ring full waits at a time before it looks again
/// by itself (a wake-up comes first, unless the other process is gone or broken).
pub const ROOM_RECHECK: Duration = Duration::from_millis(100);

/// The two rings of a connection that moved into shared memory, and its waiters.
struct Rings {
    tx: Mutex<Producer>,
    rx: Mutex<Consumer>,
    /// Set when the socket may hold wake-ups (or the end of the stream): after a sleep,
    /// and between two windows of busy polling. Reads look at the socket only then, so
    /// that a stream of messages takes no system call.
    look: AtomicBool,
    /// Waits left that skip watching the ring, and how many the next skip will be:
    /// [`MISSES_BEFORE_SKIP`] watches in a row that find nothing make the next waits
    /// skip it, 1, 2, 4, up to [`MAX_SKIP`] of them, so that an idle connection hardly
    /// ever spins.
    skip: AtomicU32,
    next_skip: AtomicU32,
    /// Watches in a row that found nothing.
    misses: AtomicU32,
    /// This side's writer waits here for room in the ring it writes.
    room_wait: OwnedFd,
    /// The same, registered with the runtime of the task that waits (made at its first
    /// wait).
    room_wait_async: OnceLock<AsyncFd<OwnedFd>>,
    /// Signalled when this side frees room in the ring it reads and the writer on the
    /// other side waits for it.
    room_signal: OwnedFd,
}

/// The two `eventfd`s that tell a connection's writers that their ring has room again:
/// `wait`, on which this side's writer waits, and `signal`, which this side signals for
/// the writer on the other side.
#[derive(Debug)]
pub struct Rooms {
    /// What this side's writer waits on.
    pub wait: OwnedFd,
    /// What this side signals.
    pub signal: OwnedFd,
}

impl Rooms {
    /// Two new `eventfd`s (non-blocking, close-on-exec): one for each ring of a region,
    /// in ring order. The side that creates the region keeps both, waits on the first
    /// and signals the second, and passes both to the other side, which waits on the
    /// second and signals the first ([`Rooms::for_side`]).
    ///
    /// # Errors
    ///
    /// The error of `eventfd`.
    pub fn create() -> io::Result<(OwnedFd, OwnedFd)> {
        #[cfg(target_os = "linux")]
        {
            let flags = EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK;
            Ok((eventfd(0, flags)?, eventfd(0, flags)?))
        }
        #[cfg(not(target_os = "linux"))]
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "shared memory between processes is only used on Linux",
        ))
    }

    /// The roles of the `eventfd`s of rings 0 and 1 for `side`.
    pub fn for_side(side: Side, ring0: OwnedFd, ring1: OwnedFd) -> Rooms {
        match side {
            Side::A => Rooms {
                wait: ring0,
                signal: ring1,
            },
            Side::B => Rooms {
                wait: ring1,
                signal: ring0,
            },
        }
    }
}

/// A connection's byte stream. See the [module documentation](self).
pub struct Stream {
    socket: UnixStream,
    shm: OnceLock<Rings>,
    /// How long a read that may block waits for a wake-up on the rings (the socket's
    /// own read timeout plays that part for a blocking socket).
    blocking_wait: Option<Duration>,
    /// How long a reader about to sleep first watches the ring (see [`Stream::set_spin`]).
    spin: Duration,
    /// Whether readers never sleep on rings (see [`Stream::set_spin`]).
    busy_poll: bool,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("socket", &self.socket)
            .field("shm", &self.is_shm())
            .finish()
    }
}

impl Stream {
    /// A stream over `socket`. `blocking_wait` is how long a read that may block waits
    /// once the stream is on rings (`None`: never blocks, for a non-blocking socket).
    pub fn new(socket: UnixStream, blocking_wait: Option<Duration>) -> Stream {
        Stream {
            socket,
            shm: OnceLock::new(),
            blocking_wait,
            spin: Duration::ZERO,
            busy_poll: false,
        }
    }

    /// How a reader on rings waits: it first watches the ring for up to `spin` before it
    /// goes to sleep (a message that comes meanwhile costs no wake-up on either side);
    /// [`MISSES_BEFORE_SKIP`] watches in a row that found nothing make the next waits
    /// skip it (1, 2, 4, up to [`MAX_SKIP`] of them, back to none once a watch finds a
    /// message), so that a connection with little traffic hardly spins;
    /// with `busy_poll` it never sleeps: it watches the ring in windows of `spin` (at
    /// least [`BUSY_POLL_WINDOW`]) and looks at the socket between them, which keeps a
    /// processor busy for as long as it waits. Neither applies on one processor, where
    /// watching would only delay the writer. No effect on a socket.
    pub fn set_spin(&mut self, spin: Duration, busy_poll: bool) {
        let several = std::thread::available_parallelism().is_ok_and(|n| n.get() > 1);
        self.busy_poll = busy_poll && several;
        self.spin = match (several, busy_poll) {
            (false, _) => Duration::ZERO,
            (true, true) => spin.max(BUSY_POLL_WINDOW),
            (true, false) => spin,
        };
    }

    /// The socket: to poll, and for what only a socket does (shutdown, credentials).
    pub fn socket(&self) -> &UnixStream {
        &self.socket
    }

    /// Whether the bytes go through shared memory.
    pub fn is_shm(&self) -> bool {
        self.shm.get().is_some()
    }

    /// From now on the bytes go through `region`'s rings, this process being `side`.
    /// Call it once, at a point of the conversation where neither side has bytes in
    /// flight on the socket. Returns `false` (and changes nothing) if already done.
    pub fn use_shm(&self, region: Region, side: Side, rooms: Rooms) -> bool {
        let (tx, rx) = region.split(side);
        self.shm
            .set(Rings {
                tx: Mutex::new(tx),
                rx: Mutex::new(rx),
                look: AtomicBool::new(true),
                skip: AtomicU32::new(0),
                next_skip: AtomicU32::new(1),
                misses: AtomicU32::new(0),
                room_wait: rooms.wait,
                room_wait_async: OnceLock::new(),
                room_signal: rooms.signal,
            })
            .is_ok()
    }

    /// Before waiting in `poll` for the socket: `true` when there is something to read
    /// already (do not wait). On rings, tells the writer on the other side that this
    /// one is going to sleep.
    /// While it watches the ring (see [`Stream::set_spin`]), it stops as soon as
    /// `give_up` says so (another thread wants the read role, or what the caller waits
    /// for came another way), and returns `true` then, for the caller to look again.
    pub fn before_wait(&self, give_up: &dyn Fn() -> bool) -> bool {
        let Some(r) = self.shm.get() else {
            return false;
        };
        let skip = r.skip.load(Ordering::Relaxed);
        if skip > 0 && !self.busy_poll {
            r.skip.store(skip - 1, Ordering::Relaxed);
        } else if !self.spin.is_zero() {
            let until = Instant::now() + self.spin;
            let mut rx = r.rx.lock();
            loop {
                // A corrupt ring is "something to read": the read reports it.
                if rx.available().map_or(true, |n| n > 0) {
                    r.next_skip.store(1, Ordering::Relaxed);
                    r.misses.store(0, Ordering::Relaxed);
                    return true;
                }
                for _ in 0..64 {
                    std::hint::spin_loop();
                }
                if give_up() {
                    return true;
                }
                if Instant::now() >= until {
                    break;
                }
            }
            if self.busy_poll {
                // "Ready": the caller reads (and so looks at the socket), then comes back.
                r.look.store(true, Ordering::Relaxed);
                return true;
            }
            // Nothing came while watching, several times in a row: skip it for the next
            // few waits.
            if r.misses.fetch_add(1, Ordering::Relaxed) + 1 >= MISSES_BEFORE_SKIP {
                r.misses.store(0, Ordering::Relaxed);
                let next = r.next_skip.load(Ordering::Relaxed);
                r.skip.store(next, Ordering::Relaxed);
                r.next_skip
                    .store((next * 2).min(MAX_SKIP), Ordering::Relaxed);
            }
        }
        r.rx.lock().prepare_sleep().unwrap_or(true)
    }

    /// After `poll` returned, when [`Stream::before_wait`] said to wait (and only then).
    pub fn after_wait(&self) {
        if let Some(r) = self.shm.get() {
            r.rx.lock().cancel_sleep();
            r.look.store(true, Ordering::Relaxed);
        }
    }

    /// One read into the spare room of `buf` (at least `at_least` bytes of it), never
    /// blocking if `nowait`: `Ok(0)` at the end of the stream, `WouldBlock` when there
    /// is nothing yet. A blocking socket blocks up to its read timeout; on rings, a read
    /// that may block waits up to `blocking_wait` for a wake-up.
    ///
    /// # Errors
    ///
    /// The socket's error, `InvalidData` for a corrupt ring.
    pub fn read_into(
        &self,
        buf: &mut BytesMut,
        at_least: usize,
        nowait: bool,
    ) -> io::Result<usize> {
        let Some(r) = self.shm.get() else {
            return if nowait {
                crate::sys::read_into_nowait(&self.socket, buf, at_least)
            } else {
                crate::sys::read_into(&self.socket, buf, at_least)
            };
        };
        // Wake-ups are drained first: one left in the socket would end the next `poll`
        // at once, for nothing.
        let ended = r.look.swap(false, Ordering::Relaxed) && self.drain_wakeups()?;
        let n = self.read_ring(r, buf, at_least)?;
        if n > 0 {
            return Ok(n);
        }
        if ended {
            return Ok(0);
        }
        if let (false, Some(wait)) = (nowait, self.blocking_wait) {
            if !self.before_wait(&|| false) {
                let mut fds = [pollfd(self.socket.as_fd())];
                let waited = wait_readable(&mut fds, Some(Instant::now() + wait));
                self.after_wait();
                waited?;
                r.look.store(false, Ordering::Relaxed);
                if self.drain_wakeups()? {
                    // The other side wrote its last bytes before it went.
                    let n = self.read_ring(r, buf, at_least)?;
                    return Ok(n);
                }
            }
            let n = self.read_ring(r, buf, at_least)?;
            if n > 0 {
                return Ok(n);
            }
        }
        Err(ErrorKind::WouldBlock.into())
    }

    fn read_ring(&self, r: &Rings, buf: &mut BytesMut, at_least: usize) -> io::Result<usize> {
        let read = r.rx.lock().read_into(buf, at_least)?;
        if read.wake_peer {
            // The other side's writer waits for room: one count on its eventfd. A full
            // counter already wakes it, so a failed write loses nothing.
            let _ = rustix::io::write(&r.room_signal, &1u64.to_ne_bytes());
        }
        Ok(read.n)
    }

    /// Empties the socket of wake-ups: `true` when the other side is gone.
    fn drain_wakeups(&self) -> io::Result<bool> {
        let mut sink = [0u8; 64];
        let mut ended = false;
        loop {
            match rustix::net::recv(&self.socket, &mut sink[..], RecvFlags::DONTWAIT) {
                Ok((0, _)) => {
                    ended = true;
                    break;
                }
                Ok((n, _)) if n < sink.len() => break,
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => break,
                Err(rustix::io::Errno::CONNRESET) => {
                    ended = true;
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(ended)
    }

    /// One byte on the socket: "look at the rings". A full socket already holds one.
    fn wake_peer(&self) {
        let _ = rustix::net::send(
            &self.socket,
            &[1],
            SendFlags::DONTWAIT | crate::shm::NOSIGNAL,
        );
    }

    /// Writes what fits of `buf` without blocking: `WouldBlock` when nothing does.
    ///
    /// # Errors
    ///
    /// The socket's error, `InvalidData` for a corrupt ring.
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    /// As [`Stream::write`], gathering `bufs` in order.
    ///
    /// # Errors
    ///
    /// As [`Stream::write`].
    pub fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let Some(r) = self.shm.get() else {
            return io::Write::write_vectored(&mut &self.socket, bufs);
        };
        let written = r.tx.lock().write_vectored(bufs)?;
        if written.wake_peer {
            self.wake_peer();
        }
        if written.n == 0 && bufs.iter().any(|b| !b.is_empty()) {
            return Err(ErrorKind::WouldBlock.into());
        }
        Ok(written.n)
    }

    /// Blocks until the ring this side writes has room, or `timeout` passes (on a
    /// socket: until it is writable).
    ///
    /// # Errors
    ///
    /// A corrupt ring; the socket's error.
    pub fn wait_room(&self, timeout: Duration) -> io::Result<()> {
        let Some(r) = self.shm.get() else {
            let mut fds = [rustix::event::PollFd::new(
                &self.socket,
                rustix::event::PollFlags::OUT,
            )];
            let t = rustix::event::Timespec {
                tv_sec: timeout.as_secs() as i64,
                tv_nsec: timeout.subsec_nanos().into(),
            };
            return match rustix::event::poll(&mut fds, Some(&t)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => Ok(()),
                Err(e) => Err(e.into()),
            };
        };
        let result = r.tx.lock().prepare_wait_for_room();
        if let Ok(false) = result {
            let mut fds = [pollfd(r.room_wait.as_fd())];
            let waited = wait_readable(&mut fds, Some(Instant::now() + timeout));
            drain_count(&r.room_wait);
            r.tx.lock().cancel_wait();
            waited?;
        }
        result.map(drop).map_err(Into::into)
    }

    /// As [`Stream::wait_room`], for a task (waiting at most [`ROOM_RECHECK`] at a
    /// time); on a socket, returns at once (the caller waits for writability with its
    /// runtime).
    ///
    /// # Errors
    ///
    /// A corrupt ring; registering the `eventfd` with the runtime.
    pub async fn wait_room_async(&self) -> io::Result<()> {
        let Some(r) = self.shm.get() else {
            return Ok(());
        };
        let watch = match r.room_wait_async.get() {
            Some(w) => w,
            None => {
                // SAFETY: the duplicate is an `OwnedFd` that the `AsyncFd` owns: it stays
                // open and unchanged until the registration is dropped with it.
                let w = unsafe {
                    AsyncFd::register_with_interest(r.room_wait.try_clone()?, Interest::READABLE)
                }
                .map_err(io::Error::from)?;
                r.room_wait_async.get_or_init(|| w)
            }
        };
        let result = r.tx.lock().prepare_wait_for_room();
        if let Ok(false) = result {
            if let Ok(Ok(mut ready)) = tokio::time::timeout(ROOM_RECHECK, watch.readable()).await {
                ready.clear_ready();
            }
            drain_count(&r.room_wait);
            r.tx.lock().cancel_wait();
        }
        result.map(drop).map_err(Into::into)
    }

    /// Writes all of `buf`, waiting for room as needed, up to `deadline`.
    ///
    /// # Errors
    ///
    /// `TimedOut` at the deadline; the errors of [`Stream::write`].
    pub fn write_all(&self, mut buf: &[u8], deadline: Option<Instant>) -> io::Result<()> {
        while !buf.is_empty() {
            match self.write(buf) {
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                    if left == Some(Duration::ZERO) {
                        return Err(ErrorKind::TimedOut.into());
                    }
                    self.wait_room(left.unwrap_or(ROOM_RECHECK).min(ROOM_RECHECK))?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl io::Write for &Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Stream::write(self, buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        Stream::write_vectored(self, bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Empties an `eventfd`'s counter (non-blocking).
fn drain_count(fd: &OwnedFd) {
    let mut count = [0u8; 8];
    let _ = rustix::io::read(fd, &mut count);
}
