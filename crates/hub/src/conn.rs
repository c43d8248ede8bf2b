//! One child connection, the hub's end: what differs from the child's end (accepting and
//! checking the peer, its hello, handing frames to the router); the rest is the
//! connection engine (`yukicomm_link`), shared with the child's end.
//!
//! Reading is a role, as on the child's side. Usually the connection's reader thread
//! holds it: it waits in `poll` on the socket (and on a wake-up pipe) and routes what it
//! reads. A thread of the main process about to block receiving a message this child
//! sends can take the role instead ([`Conn::pump`]): the reader steps aside when poked,
//! and leaves the role alone while that thread keeps coming back, so that the message
//! reaches its receiver with no hand-off and no other thread wakes for it.
//!
//! Writing goes through the [`Outbox`]; the flusher is a task on the runtime, which waits
//! for room only when a write found the socket (or the ring) full.
//!
//! Before its hello, a connection may ask to move into shared memory
//! (`move_to_shared_memory`, `docs/PROTOCOL.md` section 20); from then on its
//! [`Stream`] reads and writes two rings, and everything above stays the same.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::Notify;
use yukicomm_link::reader::{self, background, FrameHandler, Pumped, ReadBuffer};
use yukicomm_link::role::ReadRole;
use yukicomm_link::shm::{self, Region, Side};
use yukicomm_link::stream::{Rooms, Stream};
use yukicomm_link::sys::{pollfd, wait_readable};
use yukicomm_link::{Outbox, OutboxSink, Pending};
use yukicomm_wire::{
    encode_control, encode_credit, encode_frame, encode_msg_head, encode_msg_raw, encode_msg_tail,
    ErrorCode, Frame, Msg, Reply, Request,
};

use crate::core::Inner;
use crate::router::ConnId;

/// How long a new connection may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames pushed closer together than this are coalesced into one write.
const BURST_WINDOW: Duration = Duration::from_micros(3);
/// The socket send buffer asked for (see [`yukicomm_link::sys::set_send_buffer`]).
const SEND_BUFFER: usize = 1 << 20;
/// Message bodies at least this large are written from where they are rather than
/// copied into the connection's buffer.
const SPLICE_FROM: usize = 16 * 1024;
/// Appends message `m` to `out`; a large body is spliced in, not copied.
fn append_msg(out: &mut Pending, m: &Msg) {
    if m.body.len() >= SPLICE_FROM {
        encode_msg_head(out.bytes(), m.chan, m.to, &m.carried, m.body.len());
        out.splice(m.body.clone());
        encode_msg_tail(out.bytes(), &m.carried);
    } else {
        encode_msg_raw(out.bytes(), m.chan, m.to, &m.carried, &m.body);
    }
}

/// A child's connection, shared by every thread that routes to it.
pub(crate) struct Conn {
    pub(crate) id: ConnId,
    /// The socket (non-blocking), or the rings in shared memory beside it.
    stream: Stream,
    outbox: Outbox,
    /// Bytes this connection may have waiting to be written before the hub gives up on
    /// the peer ([`crate::HubConfig::max_unread`]).
    max_buffered: usize,
    flush: Notify,
    closed: AtomicBool,
    /// The read role: the bytes read and not yet decoded.
    read: Mutex<ReadBuffer>,
    /// Why the connection must close, found by a reader that is not the reader thread.
    failure: Mutex<Option<String>>,
    /// Who may read, and how they hand the role over (see [`ReadRole`]).
    role: ReadRole,
    /// Messages and bytes it sent and was delivered.
    pub(crate) traffic: crate::stats::TrafficCounters,
}

thread_local! {
    /// Set on the thread that is pumping a connection.
    pub(crate) static IS_PUMPING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl OutboxSink for Conn {
    fn write(&self, buf: &[u8]) -> std::io::Result<usize> {
        self.stream.write(buf)
    }

    fn write_vectored(&self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        self.stream.write_vectored(bufs)
    }

    fn wake_flusher(&self) {
        self.flush.notify_one();
    }
}

impl Conn {
    /// Appends frames to this connection's buffer (encoded in one go); [`Conn::kick`]
    /// writes them.
    pub(crate) fn append_all<'a>(&self, frames: impl Iterator<Item = &'a Frame>) {
        let (mut msgs, mut bytes) = (0, 0);
        let r = self.outbox.append_spliced::<()>(|out| {
            for f in frames {
                match f {
                    Frame::Msg(m) => {
                        msgs += 1;
                        bytes += m.body.len() as u64;
                        append_msg(out, m)
                    }
                    Frame::Credit {
                        chan,
                        end,
                        n,
                        bytes,
                    } => encode_credit(out.bytes(), *chan, *end, *n, *bytes),
                    other => encode_frame(out.bytes(), other),
                }
            }
            Ok(())
        });
        self.traffic.add_out(msgs, bytes);
        if r.is_err() {
            self.shut();
        } else if self.outbox.buffered() > self.max_buffered {
            tracing::warn!(
                conn = self.id.0,
                "the peer does not read; closing its connection"
            );
            self.outbox.break_with(std::io::ErrorKind::OutOfMemory);
            self.shut();
        }
    }

    /// Appends one message; `false` if the connection is broken.
    pub(crate) fn append_msg(&self, m: &Msg) -> bool {
        self.traffic.add_out(1, m.body.len() as u64);
        self.outbox
            .append_spliced::<()>(|out| {
                append_msg(out, m);
                Ok(())
            })
            .is_ok()
    }

    /// Appends what `encode` writes; `Err(None)` if the connection is broken.
    pub(crate) fn append_with<E>(
        &self,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), Option<E>> {
        self.outbox.append(encode).map_err(|e| match e {
            yukicomm_link::Push::Encode(e) => Some(e),
            yukicomm_link::Push::Broken(_) => None,
        })
    }

    /// Bytes appended and not yet written.
    pub(crate) fn buffered(&self) -> usize {
        self.outbox.buffered()
    }

    /// Writes what was appended, or leaves it to the flusher.
    pub(crate) fn kick(&self) {
        if self.outbox.kick(self).is_err() {
            self.shut();
        }
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
        IS_PUMPING.with(|p| p.set(true));
        let closed = || self.closed.load(Ordering::Acquire);
        let pump = reader::Pump {
            stream: &self.stream,
            role: &self.role,
            side: &self.read,
            handler: &Route {
                inner,
                id: self.id,
                traffic: &self.traffic,
            },
            closed: &closed,
            also_wake: Some(&inner.pump_wake.0),
        };
        let result = match reader::pump(&pump, ready, deadline) {
            Pumped::Ended(reason) => {
                self.fail(reason);
                Pumped::Unavailable
            }
            other => other,
        };
        IS_PUMPING.with(|p| p.set(false));
        inner.pumping.store(false, Ordering::SeqCst);
        result
    }

    /// Closes the connection for `reason` (`None`: the peer closed it), found by a
    /// thread other than its reader thread, which reports it.
    fn fail(&self, reason: Option<String>) {
        *self.failure.lock() = reason;
        self.shut();
    }

    /// Closes the connection: the reader stops and the hub forgets it.
    pub(crate) fn shut(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            self.outbox
                .break_with(std::io::ErrorKind::ConnectionAborted);
            self.role.wake_all();
            self.flush.notify_one();
        }
    }

    /// The reader thread's loop: reads and routes until the connection closes; returns
    /// why it closed (`None` for a clean close).
    fn read_loop(&self, inner: &Inner) -> Option<String> {
        let route = Route {
            inner,
            id: self.id,
            traffic: &self.traffic,
        };
        self.read_loop_with(&route)
    }

    /// The reader thread's loop with another handler of the frames (an observer's).
    pub(crate) fn read_loop_with(&self, handler: &dyn FrameHandler) -> Option<String> {
        let closed = || self.closed.load(Ordering::Acquire);
        background(&self.stream, &self.role, &self.read, handler, &closed)
            .or_else(|| self.failure.lock().take())
    }
}

/// Hands the frames a connection brings to the hub.
struct Route<'a> {
    inner: &'a Inner,
    id: ConnId,
    traffic: &'a crate::stats::TrafficCounters,
}

impl FrameHandler for Route<'_> {
    fn frames(&self, frames: &mut Vec<Frame>) -> Result<(), String> {
        self.traffic.count_in(frames);
        if self.inner.tap.active() {
            self.inner.tap.offer_frames(self.id, frames);
        }
        self.inner.frames(self.id, frames)
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
                match data.write_from(written, &mut &conn.stream) {
                    Ok(n) => written += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        let waited = if conn.stream.is_shm() {
                            conn.stream.wait_room_async().await
                        } else {
                            wait_writable(conn.stream.socket()).await
                        };
                        if let Err(e) = waited {
                            failure = Some(e.kind());
                            break;
                        }
                    }
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

/// Waits until a socket that was found full has room again. The registration with the
/// runtime lives only for this wait: a lasting one would wake the runtime every time the
/// peer reads.
async fn wait_writable(stream: &UnixStream) -> std::io::Result<()> {
    // SAFETY: the duplicate is a `UnixStream` that owns its descriptor, which stays open
    // and unchanged until `watch` is dropped at the end of this function.
    let watch = unsafe { AsyncFd::register_with_interest(stream.try_clone()?, Interest::WRITABLE) }
        .map_err(std::io::Error::from)?;
    let _ready = watch.writable().await?;
    Ok(())
}

/// Reads the first frame, by `deadline` if there is one.
fn read_hello(
    conn: &Conn,
    rs: &mut ReadBuffer,
    deadline: Option<Instant>,
) -> Result<Option<Frame>, String> {
    let mut fds = [pollfd(conn.stream.socket().as_fd())];
    loop {
        if let Some(f) = rs.decode_one()? {
            return Ok(Some(f));
        }
        let waited = if conn.stream.before_wait(&|| false) {
            Ok(true)
        } else {
            let waited = wait_readable(&mut fds, deadline);
            conn.stream.after_wait();
            waited
        };
        match waited {
            Ok(true) => {}
            Ok(false) => return Err("no hello in time".into()),
            Err(e) => return Err(e.to_string()),
        }
        match rs.read_from(&conn.stream, false) {
            Ok(()) => {}
            Err(None) => return Ok(None),
            Err(Some(e)) => return Err(e),
        }
    }
}

/// Takes an accepted connection: checks the peer, then serves it on a thread of its
/// own. Runs on the runtime (the flusher is a task).
pub(crate) fn accept(inner: Arc<Inner>, stream: tokio::net::UnixStream) {
    // Only processes of our own user may connect (the socket's directory is private too).
    match stream.peer_cred() {
        Ok(cred) if cred.uid() == rustix::process::geteuid().as_raw() => {}
        Ok(cred) => {
            tracing::warn!(uid = cred.uid(), "refused a connection from another user");
            return;
        }
        Err(e) => {
            tracing::warn!("refused a connection whose credentials cannot be read: {e}");
            return;
        }
    }
    let stream = match stream.into_std() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot take a connection: {e}");
            return;
        }
    };
    serve_on_thread(inner, stream, None);
}

/// What an adopted connection was made for: the child it belongs to, and the token
/// its hello stands for (see [`adopt`]).
pub(crate) struct Admission {
    pub(crate) name: String,
    pub(crate) token: String,
    /// Whether the connection may move into shared memory (not when its other end is
    /// a remote process's link, in this process).
    pub(crate) shared_memory: bool,
}

/// Serves the hub's end of a socket pair whose other end the supervisor hands to the
/// child `admission.name` as an inherited descriptor. The peer is known without asking
/// the kernel, and its hello needs no token: it must name that child, and then counts
/// as presenting `admission.token`, which the caller set for that child and which never
/// leaves the main process. Runs on the runtime (the flusher is a task).
pub(crate) fn adopt(
    inner: Arc<Inner>,
    stream: UnixStream,
    admission: Admission,
) -> std::io::Result<()> {
    stream.set_nonblocking(true)?;
    serve_on_thread(inner, stream, Some(admission));
    Ok(())
}

/// Serves a connection whose peer has been checked, on a thread of its own.
fn serve_on_thread(inner: Arc<Inner>, stream: UnixStream, admission: Option<Admission>) {
    let conn = match Conn::new(
        inner.next_conn_id(),
        stream,
        inner.max_frame,
        inner.max_unread,
    ) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            tracing::warn!("cannot serve a connection: {e}");
            return;
        }
    };
    start(conn, move |conn| {
        std::thread::Builder::new()
            .name(format!("yukicomm-conn-{}", conn.id.0))
            .spawn(move || serve(inner, conn, admission))
            .map(drop)
    });
}

impl Conn {
    fn new(
        id: ConnId,
        stream: UnixStream,
        max_frame: u32,
        max_buffered: usize,
    ) -> std::io::Result<Conn> {
        yukicomm_link::sys::set_send_buffer(&stream, SEND_BUFFER);
        let mut stream = Stream::new(stream, None);
        let (spin, busy_poll) = yukicomm_wire::ring_wait_from_env();
        stream.set_spin(spin, busy_poll);
        Ok(Conn {
            id,
            stream,
            outbox: Outbox::new(BURST_WINDOW),
            max_buffered,
            flush: Notify::new(),
            closed: AtomicBool::new(false),
            read: Mutex::new(ReadBuffer::new(max_frame)),
            failure: Mutex::new(None),
            role: ReadRole::new()?,
            traffic: Default::default(),
        })
    }
}

/// Starts a connection's flusher, then its reader with `spawn_reader`. A connection
/// whose reader cannot start is closed (its socket with the last reference to it), never
/// left open with nobody reading it.
fn start(conn: Arc<Conn>, spawn_reader: impl FnOnce(Arc<Conn>) -> std::io::Result<()>) {
    tokio::spawn(flusher(conn.clone()));
    if let Err(e) = spawn_reader(conn.clone()) {
        tracing::warn!(
            conn = conn.id.0,
            "cannot start a connection's reader thread, closing the connection: {e}"
        );
        conn.shut();
    }
}

/// Serves one connection until it closes.
fn serve(inner: Arc<Inner>, conn: Arc<Conn>, admission: Option<Admission>) {
    let id = conn.id;
    // A connection from the socket has a deadline for its hello; an adopted one is our
    // own child's, which may take its time to start and ends when the child does.
    let deadline = match admission {
        Some(_) => None,
        None => Some(Instant::now() + HELLO_TIMEOUT),
    };
    let mut first = read_hello(&conn, &mut conn.read.lock(), deadline);
    if let Ok(Some(Frame::Request {
        id,
        body: Request::SharedMemory { capacity },
    })) = first
    {
        let allowed = admission.as_ref().is_none_or(|a| a.shared_memory);
        if let Err(e) = move_to_shared_memory(&conn, &inner, id, capacity, allowed) {
            tracing::warn!(conn = conn.id.0, "closed a connection: {e}");
            return conn.shut();
        }
        first = read_hello(&conn, &mut conn.read.lock(), deadline);
    }
    let (req_id, version, name, token) = match first {
        Ok(Some(Frame::Request {
            id,
            body:
                Request::Hello {
                    version,
                    name,
                    token,
                },
        })) => (id, version, name, token),
        Ok(Some(Frame::Request {
            id: req_id,
            body: Request::Observe { version },
        })) if admission.is_none() => {
            return crate::observe::serve(inner, conn, req_id, version);
        }
        Ok(Some(_)) => {
            tracing::warn!(
                conn = id.0,
                "closed a connection whose first frame is not a hello"
            );
            return conn.shut();
        }
        Ok(None) => return conn.shut(),
        Err(e) => {
            tracing::warn!(conn = id.0, "closed a connection: {e}");
            return conn.shut();
        }
    };
    let token = match admission {
        // An adopted connection speaks for its child only: a hello naming another one
        // is checked with no token, which the hub refuses.
        Some(a) if a.name == name => a.token,
        Some(_) => String::new(),
        None => token,
    };
    if !inner.accept(conn.clone(), req_id, version, &name, &token) {
        // The refusal is queued; give the flusher a moment to send it.
        std::thread::sleep(Duration::from_millis(50));
        return conn.shut();
    }
    tracing::debug!(child = %name, conn = id.0, "child connected");
    let reason = conn.read_loop(&inner);
    match &reason {
        Some(e) => tracing::warn!(child = %name, "closed the connection: {e}"),
        None => tracing::debug!(child = %name, "connection closed"),
    }
    conn.shut();
    inner.disconnected(id);
}

/// The ring size a connection gets: the largest power of two within what it `asked`,
/// the hub's `setting` and the ring's bounds.
fn ring_capacity(asked: u32, setting: usize) -> usize {
    let most = (asked as usize)
        .min(setting)
        .clamp(shm::MIN_CAPACITY, shm::MAX_CAPACITY);
    1 << most.ilog2()
}

/// Answers a connection's request to move into shared memory (before its hello): a new
/// region goes with the answer, and from then on the connection's bytes go through it;
/// refused with an error when the hub's setting is 0 (the connection stays on its
/// socket). Nothing else is sent or expected meanwhile, so the answer is written here.
fn move_to_shared_memory(
    conn: &Conn,
    inner: &Inner,
    id: u32,
    asked: u32,
    allowed: bool,
) -> Result<(), String> {
    let mut answer = Vec::new();
    let capacity = ring_capacity(asked, inner.shared_memory);
    let region = if inner.shared_memory == 0 || !allowed || !shm::SUPPORTED {
        None
    } else {
        match Region::create(capacity).and_then(|r| Ok((r, Rooms::create()?))) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(conn = conn.id.0, "no shared memory for a connection: {e}");
                None
            }
        }
    };
    let socket = conn.stream.socket().as_fd();
    let sent = match region {
        None => {
            encode_control(
                &mut answer,
                &Frame::Reply {
                    id,
                    body: Reply::Error {
                        code: ErrorCode::BadRequest,
                        message: "this hub does not offer shared memory".into(),
                    },
                },
            );
            shm::send_fds(socket, &answer, &[])
        }
        Some((ref r, (ref room0, ref room1))) => {
            encode_control(
                &mut answer,
                &Frame::Reply {
                    id,
                    body: Reply::SharedMemory {
                        capacity: r.capacity() as u32,
                    },
                },
            );
            shm::send_fds(socket, &answer, &[r.fd(), room0.as_fd(), room1.as_fd()])
        }
    };
    match sent {
        Ok(n) if n == answer.len() => {}
        Ok(_) => return Err("the shared-memory answer did not fit the socket".into()),
        Err(e) => return Err(format!("cannot answer the shared-memory request: {e}")),
    }
    if let Some((region, (room0, room1))) = region {
        if !conn.read.lock().is_empty() {
            return Err("bytes after the shared-memory request, before its answer".into());
        }
        conn.stream
            .use_shm(region, Side::A, Rooms::for_side(Side::A, room0, room1));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_ring_is_the_largest_power_of_two_within_the_request_the_setting_and_the_bounds() {
        let mib: usize = 1 << 20;
        assert_eq!(ring_capacity(1 << 20, mib), mib);
        assert_eq!(ring_capacity(1 << 20, 3 * mib), mib);
        assert_eq!(ring_capacity(4 << 20, 3 * mib), 2 * mib);
        assert_eq!(ring_capacity(5000, mib), 4096);
        assert_eq!(ring_capacity(0, mib), shm::MIN_CAPACITY);
        assert_eq!(ring_capacity(u32::MAX, usize::MAX), shm::MAX_CAPACITY);
    }

    #[tokio::test]
    async fn a_connection_whose_reader_cannot_start_is_closed() {
        let (ours, mut peer) = UnixStream::pair().expect("a socket pair");
        ours.set_nonblocking(true).expect("non-blocking");
        let conn = Arc::new(Conn::new(ConnId(1), ours, 1 << 20, 1 << 20).expect("a connection"));
        start(conn, |_| Err(std::io::Error::other("no threads left")));
        // The peer sees the connection end instead of waiting on it for good.
        peer.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("a read timeout");
        let mut buf = [0u8; 16];
        let n = tokio::task::spawn_blocking(move || peer.read(&mut buf))
            .await
            .expect("the read task")
            .expect("the peer reads end of file, not a timeout");
        assert_eq!(n, 0);
    }
}
