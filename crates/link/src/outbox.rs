//! The write side of a connection: a buffer that coalesces frames into few writes.
//!
//! Sending must not wait for the peer, and must be cheap both for one message at a time
//! (latency) and for a stream of messages (throughput). The [`Outbox`] does both:
//!
//! - when the connection is idle, the sending thread writes its frame to the socket
//!   itself: no thread hand-off, one system call;
//! - when another write is in progress, or frames arrive faster than one per
//!   `burst_window`, or the sender has many requests in flight anyway
//!   ([`Outbox::push_coalesced`]), the frame is only appended to the buffer, and the
//!   connection's *flusher* (a thread or task owned by the connection) writes
//!   everything that has accumulated in one system call.
//!
//! Exactly one party owns the socket's write side at any time, so frames are never
//! interleaved. The buffer is bounded by the protocol's credit windows, not here.

use std::io::{self, IoSlice};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::pending::{Mark, Pending};

/// What an [`Outbox`] writes to.
pub trait OutboxSink: Send + Sync {
    /// Writes a prefix of `buf`, returning how much was written. May block, or may
    /// return [`io::ErrorKind::WouldBlock`] when the socket is full; the rest is then
    /// left to the flusher.
    fn write(&self, buf: &[u8]) -> io::Result<usize>;
    /// As [`OutboxSink::write`], gathering `bufs` in order (one system call).
    fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &b[..]);
        self.write(first)
    }
    /// Tells the flusher that it owns the buffer and should call
    /// [`Outbox::take_for_flush`] until it returns `None`.
    fn wake_flusher(&self);
}

/// The result of [`Outbox::push`] when the frame could not be queued.
#[derive(Debug, thiserror::Error)]
pub enum Push<E> {
    /// The encoder failed; nothing was queued.
    #[error(transparent)]
    Encode(E),
    /// An earlier write failed: the connection is broken.
    #[error("connection broken: {0}")]
    Broken(io::ErrorKind),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Nobody,
    /// A sending thread is writing directly.
    Direct,
    /// The flusher has been woken and owns the buffer until it finds it empty.
    Flusher,
}

#[derive(Debug)]
struct State {
    buf: Pending,
    /// A cleared buffer kept so that its allocation is reused.
    spare: Pending,
    owner: Owner,
    last_push: Option<Instant>,
    broken: Option<io::ErrorKind>,
}

/// A connection's write buffer, coalescing frames into few writes.
///
/// When the connection is idle, the sending thread writes its frame itself (one system
/// call, no hand-off). When another write is in progress, or frames come faster than
/// one per burst window, frames are only appended, and the connection's flusher writes
/// all that accumulated at once. Exactly one party owns the write side at any time.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    burst_window: Duration,
}

impl Outbox {
    /// An empty outbox. Frames pushed less than `burst_window` apart are coalesced by the
    /// flusher; others are written by the sender directly.
    pub fn new(burst_window: Duration) -> Outbox {
        Outbox {
            state: Mutex::new(State {
                buf: Pending::with_capacity(64 * 1024),
                spare: Pending::with_capacity(64 * 1024),
                owner: Owner::Nobody,
                last_push: None,
                broken: None,
            }),
            burst_window,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding this lock except an encoder, and the state stays
        // consistent if one does: `append_locked` cuts its partial frame off while
        // unwinding, before the lock is released, and the owner has not changed yet.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends one or more frames written by `encode`, then writes or schedules them.
    ///
    /// # Errors
    ///
    /// [`Push::Encode`] if `encode` fails (it must leave the buffer as it found it), and
    /// [`Push::Broken`] once any write on this connection has failed.
    pub fn push<E>(
        &self,
        sink: &dyn OutboxSink,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), Push<E>> {
        let st = self.append_locked(|p| encode(p.bytes()))?;
        self.kick_locked(st, sink, false).map_err(Push::Broken)
    }

    /// As [`Outbox::push`], but always leaves the write to the flusher, so that frames
    /// pushed meanwhile share it: for a sender that has many requests in flight, to
    /// which one more hand-off adds nothing it would wait for.
    ///
    /// # Errors
    ///
    /// As [`Outbox::push`].
    pub fn push_coalesced<E>(
        &self,
        sink: &dyn OutboxSink,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), Push<E>> {
        let st = self.append_locked(|p| encode(p.bytes()))?;
        self.kick_locked(st, sink, true).map_err(Push::Broken)
    }

    /// Appends frames written by `encode` without writing anything: the caller must call
    /// [`Outbox::kick`] afterwards. Lets a router append under its own lock, keeping
    /// the order in which it decided, and write after releasing it.
    ///
    /// # Errors
    ///
    /// As [`Outbox::push`].
    pub fn append<E>(
        &self,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), Push<E>> {
        self.append_locked(|p| encode(p.bytes())).map(drop)
    }

    /// As [`Outbox::append`], for an encoder that may also splice shared buffers in
    /// (large message bodies, written from where they are, without a copy).
    ///
    /// # Errors
    ///
    /// As [`Outbox::push`].
    pub fn append_spliced<E>(
        &self,
        encode: impl FnOnce(&mut Pending) -> Result<(), E>,
    ) -> Result<(), Push<E>> {
        self.append_locked(encode).map(drop)
    }

    /// Writes or schedules what [`Outbox::append`] buffered.
    ///
    /// # Errors
    ///
    /// The error of a failed write; the connection is then broken.
    pub fn kick(&self, sink: &dyn OutboxSink) -> Result<(), io::ErrorKind> {
        let st = self.lock();
        if let Some(kind) = st.broken {
            return Err(kind);
        }
        self.kick_locked(st, sink, false)
    }

    fn append_locked<E>(
        &self,
        encode: impl FnOnce(&mut Pending) -> Result<(), E>,
    ) -> Result<MutexGuard<'_, State>, Push<E>> {
        let mut st = self.lock();
        if let Some(kind) = st.broken {
            return Err(Push::Broken(kind));
        }
        let start = st.buf.mark();
        // Whatever `encode` does, failing or panicking, no part of its frame stays.
        let cut = CutOnUnwind {
            buf: &mut st.buf,
            start,
        };
        let result = encode(cut.buf);
        std::mem::forget(cut);
        if let Err(e) = result {
            st.buf.truncate(start);
            return Err(Push::Encode(e));
        }
        Ok(st)
    }

    fn kick_locked(
        &self,
        mut st: MutexGuard<'_, State>,
        sink: &dyn OutboxSink,
        coalesce: bool,
    ) -> Result<(), io::ErrorKind> {
        if st.owner != Owner::Nobody || st.buf.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        let burst = coalesce
            || st
                .last_push
                .is_some_and(|last| now.duration_since(last) < self.burst_window);
        st.last_push = Some(now);
        if burst {
            st.owner = Owner::Flusher;
            drop(st);
            sink.wake_flusher();
            return Ok(());
        }
        st.owner = Owner::Direct;
        let fresh = std::mem::take(&mut st.spare);
        let mut data = std::mem::replace(&mut st.buf, fresh);
        drop(st);

        let mut written = 0;
        let result = loop {
            match data.write_from(written, &mut SinkWriter(sink)) {
                Ok(0) => break Err(io::ErrorKind::WriteZero),
                Ok(n) => {
                    written += n;
                    if written == data.len() {
                        break Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                Err(e) => break Err(e.kind()),
            }
        };

        let mut st = self.lock();
        match result {
            Err(kind) => {
                st.broken = Some(kind);
                st.owner = Owner::Nobody;
                Err(kind)
            }
            Ok(()) => {
                if written < data.len() {
                    // The socket is full: put the unwritten rest in front of what others
                    // appended meanwhile and let the flusher wait for room.
                    data.advance(written);
                    data.append(&st.buf);
                    let appended = std::mem::replace(&mut st.buf, data);
                    st.spare = clear(appended);
                } else {
                    st.spare = clear(data);
                }
                if st.buf.is_empty() {
                    st.owner = Owner::Nobody;
                } else {
                    st.owner = Owner::Flusher;
                    drop(st);
                    sink.wake_flusher();
                }
                Ok(())
            }
        }
    }

    /// For the flusher: takes everything buffered, or returns `None` (and gives up
    /// ownership) when there is nothing left. Return the buffer with
    /// [`Outbox::flushed`] after writing it.
    pub fn take_for_flush(&self) -> Option<Pending> {
        let mut st = self.lock();
        if st.owner != Owner::Flusher {
            return None;
        }
        if st.buf.is_empty() || st.broken.is_some() {
            st.owner = Owner::Nobody;
            return None;
        }
        let fresh = std::mem::take(&mut st.spare);
        Some(std::mem::replace(&mut st.buf, fresh))
    }

    /// For the flusher: the buffer from [`Outbox::take_for_flush`] was written (or the
    /// write failed with `error`).
    pub fn flushed(&self, data: Pending, error: Option<io::ErrorKind>) {
        let mut st = self.lock();
        if st.spare.capacity() < data.capacity() {
            st.spare = clear(data);
        }
        if let Some(kind) = error {
            st.broken = Some(kind);
            st.owner = Owner::Nobody;
        }
    }

    /// Marks the connection broken: later pushes fail with `kind`.
    pub fn break_with(&self, kind: io::ErrorKind) {
        let mut st = self.lock();
        st.broken.get_or_insert(kind);
    }

    /// Bytes waiting to be written (not counting a write in progress).
    pub fn buffered(&self) -> usize {
        self.lock().buf.len()
    }

    /// Whether a write has failed or [`Outbox::break_with`] was called.
    pub fn is_broken(&self) -> bool {
        self.lock().broken.is_some()
    }
}

/// Cuts a buffer back to `start` when dropped, which only happens if an encoder panics
/// (`append_locked` forgets it otherwise).
struct CutOnUnwind<'a> {
    buf: &'a mut Pending,
    start: Mark,
}

impl Drop for CutOnUnwind<'_> {
    fn drop(&mut self) {
        self.buf.truncate(self.start);
    }
}

fn clear(mut v: Pending) -> Pending {
    v.clear();
    v
}

/// An [`OutboxSink`] as an [`io::Write`].
struct SinkWriter<'a>(&'a dyn OutboxSink);

impl io::Write for SinkWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Default)]
    struct Sink {
        written: Mutex<Vec<u8>>,
        limit: AtomicUsize,
        wakes: AtomicUsize,
    }

    impl OutboxSink for Sink {
        fn write(&self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(self.limit.load(Ordering::SeqCst));
            self.limit.fetch_sub(n, Ordering::SeqCst);
            if n == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.written.lock().unwrap().extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn wake_flusher(&self) {
            self.wakes.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn flat(p: &Pending) -> Vec<u8> {
        let mut out = Vec::new();
        p.write_all(&mut out).unwrap();
        out
    }

    fn push(o: &Outbox, s: &Sink, bytes: &[u8]) {
        o.push::<()>(s, |b| {
            b.extend_from_slice(bytes);
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn idle_push_writes_directly() {
        let o = Outbox::new(Duration::ZERO);
        let s = Sink::default();
        s.limit.store(1 << 20, Ordering::SeqCst);
        push(&o, &s, b"abc");
        push(&o, &s, b"def");
        assert_eq!(&*s.written.lock().unwrap(), b"abcdef");
        assert_eq!(s.wakes.load(Ordering::SeqCst), 0);
        assert!(o.take_for_flush().is_none());
    }

    #[test]
    fn full_socket_hands_the_rest_to_the_flusher_in_order() {
        let o = Outbox::new(Duration::ZERO);
        let s = Sink::default();
        s.limit.store(2, Ordering::SeqCst);
        push(&o, &s, b"abcd");
        assert_eq!(s.wakes.load(Ordering::SeqCst), 1);
        push(&o, &s, b"ef"); // flusher owns the buffer: only appended
        let data = o.take_for_flush().unwrap();
        assert_eq!(flat(&data), b"cdef");
        o.flushed(data, None);
        assert!(o.take_for_flush().is_none());
        // Ownership returned: the next push writes directly again.
        s.limit.store(1 << 20, Ordering::SeqCst);
        push(&o, &s, b"g");
        assert_eq!(&*s.written.lock().unwrap(), b"abg");
    }

    #[test]
    fn coalesced_pushes_leave_the_write_to_the_flusher() {
        let o = Outbox::new(Duration::ZERO);
        let s = Sink::default();
        s.limit.store(1 << 20, Ordering::SeqCst);
        let coalesced = |bytes: &'static [u8]| {
            o.push_coalesced::<()>(&s, |b| {
                b.extend_from_slice(bytes);
                Ok(())
            })
            .unwrap()
        };
        coalesced(b"1");
        coalesced(b"2");
        push(&o, &s, b"3"); // the flusher owns the buffer: appended too
        assert!(s.written.lock().unwrap().is_empty());
        assert_eq!(s.wakes.load(Ordering::SeqCst), 1);
        assert_eq!(flat(&o.take_for_flush().unwrap()), b"123");
    }

    #[test]
    fn a_failing_or_panicking_encoder_leaves_nothing() {
        let o = Outbox::new(Duration::from_secs(60));
        let s = Sink::default();
        s.limit.store(1 << 20, Ordering::SeqCst);
        push(&o, &s, b"1");
        push(&o, &s, b"2"); // in a burst: stays in the buffer
        let failed = o.push(&s, |b| {
            b.extend_from_slice(b"half a frame");
            Err("no")
        });
        assert!(matches!(failed, Err(Push::Encode("no"))));
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = o.push::<()>(&s, |b| {
                b.extend_from_slice(b"half a frame");
                panic!("a user's Serialize panics");
            });
        }));
        assert!(panicked.is_err());
        push(&o, &s, b"3");
        assert_eq!(flat(&o.take_for_flush().unwrap()), b"23");
    }

    #[test]
    fn bursts_are_coalesced_and_failures_stick() {
        let o = Outbox::new(Duration::from_secs(60));
        let s = Sink::default();
        s.limit.store(1 << 20, Ordering::SeqCst);
        push(&o, &s, b"1");
        push(&o, &s, b"2");
        push(&o, &s, b"3");
        assert_eq!(&*s.written.lock().unwrap(), b"1");
        assert_eq!(flat(&o.take_for_flush().unwrap()), b"23");
        o.flushed(Pending::default(), Some(io::ErrorKind::BrokenPipe));
        assert!(matches!(
            o.push::<()>(&s, |_| Ok(())),
            Err(Push::Broken(io::ErrorKind::BrokenPipe))
        ));
    }
}
