//! One child connection: its reader task, its outbox and its flusher task.
//!
//! Reading is a role, as on the child's side: usually the connection's task reads, but a
//! thread of the main process about to block receiving a message this child sends can
//! take the role ([`Conn::pump`]) and read the socket itself, so that the message reaches
//! it without a hand-off through the runtime. The task holds the role only while it
//! reads and routes, never while it waits.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use bytes::BytesMut;
use std::io::Write;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::UnixStream;
use tokio::sync::Notify;
use yukicomm_wire::sys::{pollfd, read_into, wait_readable};
use yukicomm_wire::{
    encode_control, encode_credit, encode_msg_raw, Decoder, Frame, Outbox, OutboxSink, Request,
};

use crate::router::ConnId;
use crate::Inner;

/// How long a new connection may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames pushed closer together than this are coalesced into one write.
const BURST_WINDOW: Duration = Duration::from_micros(3);
/// Bytes a connection may have waiting to be written before the hub gives up on the peer.
/// Credit bounds what the hub sends a process that reads; a process that stops reading
/// while others keep sending to it, or keeps making requests without reading the
/// replies, reaches this and is disconnected instead of growing the hub's memory.
const MAX_BUFFERED: usize = 1 << 30;
/// The socket send buffer asked for (see [`yukicomm_wire::sys::set_send_buffer`]).
const SEND_BUFFER: usize = 1 << 20;
/// Bytes read from the socket at a time.
const READ_SIZE: usize = 256 * 1024;

/// The write side of a connection, shared by every thread that routes to it.
pub(crate) struct Conn {
    pub(crate) id: ConnId,
    /// The socket, registered with the runtime for readability only: writes are tried
    /// directly, and only a write that finds the socket full waits for room (see
    /// [`wait_writable`]). A registration for writability would wake the runtime every
    /// time the peer reads.
    stream: AsyncFd<std::os::unix::net::UnixStream>,
    outbox: Outbox,
    flush: Notify,
    closed: AtomicBool,
    close: Notify,
    /// The read role: the bytes read and not yet decoded.
    read: Mutex<ReadSide>,
    /// Signalled when a thread gives the read role back to the task.
    read_free: Notify,
    decoder: Decoder,
}

/// What the reader of a connection owns.
struct ReadSide {
    buf: BytesMut,
    frames: Vec<Frame>,
    /// Why the connection must close, found by a reader that is not the task.
    failure: Option<String>,
}

thread_local! {
    /// Set on the thread that is pumping a connection.
    pub(crate) static IS_PUMPING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// What [`Conn::pump`] did.
pub(crate) enum Pumped {
    Ready,
    Timeout,
    Unavailable,
}

impl OutboxSink for Conn {
    fn write(&self, buf: &[u8]) -> std::io::Result<usize> {
        self.stream.get_ref().write(buf)
    }

    fn wake_flusher(&self) {
        self.flush.notify_one();
    }
}

impl Conn {
    /// Appends frames to this connection's buffer (encoded in one go); [`Conn::kick`]
    /// writes them.
    pub(crate) fn append_all<'a>(&self, frames: impl Iterator<Item = &'a Frame>) {
        let r = self.outbox.append::<()>(|buf| {
            for f in frames {
                match f {
                    Frame::Msg(m) => encode_msg_raw(buf, m.chan, m.to, &m.carried, &m.body),
                    Frame::Credit { chan, end, n } => encode_credit(buf, *chan, *end, *n),
                    other => encode_control(buf, other),
                }
            }
            Ok(())
        });
        if r.is_err() {
            self.shut();
        } else if self.outbox.buffered() > MAX_BUFFERED {
            tracing::warn!(
                conn = self.id.0,
                "the peer does not read; closing its connection"
            );
            self.outbox.break_with(std::io::ErrorKind::OutOfMemory);
            self.shut();
        }
    }

    /// Appends what `encode` writes; `Err(None)` if the connection is broken.
    pub(crate) fn append_with<E>(
        &self,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), Option<E>> {
        self.outbox.append(encode).map_err(|e| match e {
            yukicomm_wire::Push::Encode(e) => Some(e),
            yukicomm_wire::Push::Broken(_) => None,
        })
    }

    /// Writes what was appended, or leaves it to the flusher.
    pub(crate) fn kick(&self) {
        if self.outbox.kick(self).is_err() {
            self.shut();
        }
    }

    /// Decodes and routes every complete frame read so far.
    fn process(&self, inner: &Inner, rs: &mut ReadSide) -> Result<(), String> {
        let bad = loop {
            match self.decoder.decode(&mut rs.buf) {
                Ok(Some(f)) => rs.frames.push(f),
                Ok(None) => break None,
                Err(e) => break Some(e.to_string()),
            }
        };
        if !rs.frames.is_empty() {
            inner.frames(self.id, &mut rs.frames)?;
        }
        bad.map_or(Ok(()), Err)
    }

    /// Reads this connection on the calling thread until `ready` holds, `deadline`
    /// passes, or the connection fails; see the module documentation.
    pub(crate) fn pump(
        &self,
        inner: &Inner,
        ready: &dyn Fn() -> bool,
        deadline: Option<Instant>,
    ) -> Pumped {
        // One pumping thread at a time: it is woken through `pump_wake` when its message
        // arrives through another connection.
        if inner.pumping.swap(true, Ordering::SeqCst) {
            return Pumped::Unavailable;
        }
        let result = match self.read.try_lock_for(Duration::from_micros(100)) {
            Some(rs) => {
                IS_PUMPING.with(|p| p.set(true));
                let r = self.pump_locked(inner, rs, ready, deadline);
                IS_PUMPING.with(|p| p.set(false));
                self.read_free.notify_one();
                r
            }
            None => Pumped::Unavailable,
        };
        inner.pumping.store(false, Ordering::SeqCst);
        result
    }

    fn pump_locked(
        &self,
        inner: &Inner,
        mut rs: parking_lot::MutexGuard<'_, ReadSide>,
        ready: &dyn Fn() -> bool,
        deadline: Option<Instant>,
    ) -> Pumped {
        let mut fds = [
            pollfd(self.stream.get_ref().as_raw_fd()),
            pollfd(inner.pump_wake.0.as_raw_fd()),
        ];
        let result = loop {
            if let Err(e) = self.process(inner, &mut rs) {
                rs.failure = Some(e);
                self.shut();
                break Pumped::Unavailable;
            }
            if ready() {
                break Pumped::Ready;
            }
            if self.closed.load(Ordering::Acquire) {
                break Pumped::Unavailable;
            }
            match wait_readable(&mut fds, deadline) {
                Ok(true) => {}
                Ok(false) => break Pumped::Timeout,
                Err(_) => break Pumped::Unavailable,
            }
            if fds[1].revents != 0 {
                yukicomm_wire::sys::drain(&inner.pump_wake.0);
            }
            if fds[0].revents == 0 {
                continue;
            }
            match read_into(self.stream.get_ref().as_raw_fd(), &mut rs.buf, READ_SIZE) {
                Ok(0) => {
                    if !rs.buf.is_empty() {
                        rs.failure = Some("connection closed mid-frame".into());
                    }
                    self.shut();
                    break Pumped::Unavailable;
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    if e.kind() != std::io::ErrorKind::ConnectionReset || !rs.buf.is_empty() {
                        rs.failure = Some(e.to_string());
                    }
                    self.shut();
                    break Pumped::Unavailable;
                }
            }
        };
        drop(rs);
        result
    }

    /// Closes the connection: the reader stops and the hub forgets it.
    pub(crate) fn shut(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            self.outbox
                .break_with(std::io::ErrorKind::ConnectionAborted);
            self.close.notify_one();
            self.flush.notify_one();
        }
    }
}

async fn flusher(conn: Arc<Conn>) {
    loop {
        conn.flush.notified().await;
        while let Some(data) = conn.outbox.take_for_flush() {
            let mut written = 0;
            let mut failure = None;
            while written < data.len() {
                if conn.closed.load(Ordering::Acquire) {
                    failure = Some(std::io::ErrorKind::ConnectionAborted);
                    break;
                }
                if let Err(e) = wait_writable(conn.stream.get_ref()).await {
                    failure = Some(e.kind());
                    break;
                }
                match conn.stream.get_ref().write(&data[written..]) {
                    Ok(n) => written += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        failure = Some(e.kind());
                        break;
                    }
                }
            }
            conn.outbox.flushed(data, failure);
            if failure.is_some() {
                conn.shut();
            }
        }
        if conn.closed.load(Ordering::Acquire) {
            return;
        }
    }
}

/// Waits until a socket that was found full has room again. The registration for
/// writability lives only for this wait.
async fn wait_writable(stream: &std::os::unix::net::UnixStream) -> std::io::Result<()> {
    // SAFETY: the duplicate is a `UnixStream` that owns its descriptor, which stays open
    // and unchanged until `watch` is dropped at the end of this function.
    let watch = unsafe { AsyncFd::register_with_interest(stream.try_clone()?, Interest::WRITABLE) }
        .map_err(std::io::Error::from)?;
    let _ready = watch.writable().await?;
    Ok(())
}

/// Reads one frame, reading more from the socket as needed; `Ok(None)` on a clean close.
async fn read_frame(
    stream: &AsyncFd<std::os::unix::net::UnixStream>,
    buf: &mut BytesMut,
    decoder: &Decoder,
) -> Result<Option<Frame>, String> {
    loop {
        if let Some(f) = decoder.decode(buf).map_err(|e| e.to_string())? {
            return Ok(Some(f));
        }
        let mut ready = stream.readable().await.map_err(|e| e.to_string())?;
        match read_into(stream.get_ref().as_raw_fd(), buf, READ_SIZE) {
            Ok(0) if buf.is_empty() => return Ok(None),
            Ok(0) => return Err("connection closed mid-frame".into()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => ready.clear_ready(),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Serves one accepted connection until it closes.
pub(crate) async fn serve(inner: Arc<Inner>, stream: UnixStream) {
    // Only processes of our own user may connect (the socket's directory is private too).
    match stream.peer_cred() {
        Ok(cred) if cred.uid() == unsafe { libc::geteuid() } => {}
        Ok(cred) => {
            tracing::warn!(uid = cred.uid(), "refused a connection from another user");
            return;
        }
        Err(e) => {
            tracing::warn!("refused a connection whose credentials cannot be read: {e}");
            return;
        }
    }
    yukicomm_wire::sys::set_send_buffer(stream.as_raw_fd(), SEND_BUFFER);
    let registered = stream
        .into_std()
        // SAFETY: the `UnixStream` owns its descriptor, which stays open and unchanged
        // for as long as the `AsyncFd` (and so the connection) lives.
        .and_then(|s| {
            unsafe { AsyncFd::register_with_interest(s, Interest::READABLE) }
                .map_err(std::io::Error::from)
        });
    let stream = match registered {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot register a connection: {e}");
            return;
        }
    };
    let id = inner.next_conn_id();
    let conn = Arc::new(Conn {
        id,
        stream,
        outbox: Outbox::new(BURST_WINDOW),
        flush: Notify::new(),
        closed: AtomicBool::new(false),
        close: Notify::new(),
        read: Mutex::new(ReadSide {
            buf: BytesMut::new(),
            frames: Vec::new(),
            failure: None,
        }),
        read_free: Notify::new(),
        decoder: Decoder::new(inner.max_frame),
    });
    tokio::spawn(flusher(conn.clone()));
    let decoder = Decoder::new(inner.max_frame);
    let mut buf = BytesMut::with_capacity(READ_SIZE);

    let first =
        tokio::time::timeout(HELLO_TIMEOUT, read_frame(&conn.stream, &mut buf, &decoder)).await;
    let (req_id, version, name, token) = match first {
        Ok(Ok(Some(Frame::Request {
            id,
            body:
                Request::Hello {
                    version,
                    name,
                    token,
                },
        }))) => (id, version, name, token),
        Ok(Ok(Some(_))) => {
            tracing::warn!(
                conn = id.0,
                "closed a connection whose first frame is not a hello"
            );
            conn.shut();
            return;
        }
        Ok(Ok(None)) => return conn.shut(),
        Ok(Err(e)) => {
            tracing::warn!(conn = id.0, "closed a connection: {e}");
            conn.shut();
            return;
        }
        Err(_) => {
            tracing::warn!(
                conn = id.0,
                "closed a connection that did not say hello in time"
            );
            conn.shut();
            return;
        }
    };
    if !inner.accept(conn.clone(), req_id, version, &name, &token) {
        // The refusal is queued; give the flusher a moment to send it.
        tokio::time::sleep(Duration::from_millis(50)).await;
        conn.shut();
        return;
    }
    conn.read.lock().buf = buf;
    tracing::debug!(child = %name, conn = id.0, "child connected");

    let reason = loop {
        let mut ready = tokio::select! {
            r = conn.stream.readable() => match r {
                Ok(ready) => ready,
                Err(e) => break Some(e.to_string()),
            },
            _ = conn.close.notified() => break conn.read.lock().failure.take(),
        };
        let step = {
            let Some(mut rs) = conn.read.try_lock() else {
                drop(ready);
                // A thread of the main process reads this connection: wait until it is
                // done (or the connection closes).
                tokio::select! {
                    _ = conn.read_free.notified() => {}
                    _ = conn.close.notified() => break conn.read.lock().failure.take(),
                }
                continue;
            };
            match read_into(conn.stream.get_ref().as_raw_fd(), &mut rs.buf, READ_SIZE) {
                Ok(0) if rs.buf.is_empty() => Err(None),
                Ok(0) => Err(Some("connection closed mid-frame".to_string())),
                Ok(_) => conn.process(&inner, &mut rs).map_err(Some),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    ready.clear_ready();
                    Ok(())
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(()),
                // A peer that dies with unread data resets the connection: a close.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && rs.buf.is_empty() => {
                    Err(None)
                }
                Err(e) => Err(Some(e.to_string())),
            }
        };
        if let Err(reason) = step {
            break reason;
        }
    };
    match &reason {
        Some(e) => tracing::warn!(child = %name, "closed the connection: {e}"),
        None => tracing::debug!(child = %name, "connection closed"),
    }
    conn.shut();
    inner.disconnected(id);
}
