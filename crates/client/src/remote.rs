//! A child's connection to the hub: one Unix stream socket, multiplexing every channel,
//! request and event. On Linux it first moves into shared memory when the hub offers it
//! (see [`Stream`] and `docs/PROTOCOL.md`, section 20): the frames then go through two
//! rings and the socket carries wake-ups; "reading the socket" below means reading the
//! connection's [`Stream`], whichever it is.
//!
//! **Reading.** Whoever holds the *read role* reads the socket, decodes frames and hands
//! them to the [`Driver`]. Usually that is the background reader thread. A thread about to
//! block in a receive takes the role instead ([`Transport::pump`]): it asks the reader to
//! step aside (through a pipe the reader polls along with the socket), then reads the
//! socket itself until its own message is there. Its message then reaches it with no
//! thread hand-off, which is what sets the round-trip latency; whatever else it reads
//! goes to the other queues as usual.
//!
//! **Writing.** Senders append to an [`Outbox`] and write directly when the socket is
//! idle; the *flusher* thread writes what accumulated while another write was under way.
//!
//! Requests are pipelined: each carries an id, any number may be in flight, and each
//! waiter has a deadline. When the socket closes, every channel end is marked
//! disconnected, every waiter wakes, and (for a supervised child) the process exits.

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures::future::{BoxFuture, FutureExt};
use parking_lot::Mutex;
use yukicomm_link::{Outbox, OutboxSink, Push};
use yukicomm_wire::store::{encode_op, Op, OpReply};
use yukicomm_wire::{
    encode_control, encode_credit, encode_msg, ChanId, Decoder, End, EndRef, Frame, Notice, Reply,
    Request, ENV_SHM, PROTOCOL_VERSION,
};

use crate::error::{ConnectError, LinkError};
use crate::node::Node;
use crate::transport::{
    Answer, BodyFn, CallHead, Driver, EncodeFn, OpFuture, Pump, Transport, TransportError,
};
use yukicomm_link::calls::{Calls, Slot, Waiter};
use yukicomm_link::reader::{self, background, FrameHandler, Pumped, ReadBuffer, READ_SIZE};
use yukicomm_link::role::ReadRole;
use yukicomm_link::shm::{self, Region, Side};
use yukicomm_link::stream::{Rooms, Stream};
use yukicomm_wire::call::{encode_call, encode_call_reply, encode_cancel, CallStatus};

/// Frames pushed closer together than this are coalesced into one write.
const BURST_WINDOW: Duration = Duration::from_micros(3);
/// The socket send buffer asked for (see [`yukicomm_link::sys::set_send_buffer`]).
const SEND_BUFFER: usize = 1 << 20;
/// The longest the flusher sleeps with nothing to write and no deadline to watch.
const IDLE_NAP: Duration = Duration::from_millis(500);
/// The longest a blocking read of the socket waits before its caller looks around.
const READ_TIMEOUT: Duration = Duration::from_millis(50);
/// The longest the opening (shared memory, hello, welcome) may take.
const OPENING_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a thread waiting for a store reply polls the socket before it blocks (see
/// [`Remote::read_reply`]).
const SPIN: Duration = Duration::from_micros(50);
/// With more store operations than this awaiting replies, a task's request is left to
/// the flusher, to share a write with those that follow (see [`Outbox::push_coalesced`]).
const COALESCE_IN_FLIGHT: usize = 16;
/// What the hub said in its welcome.
#[derive(Debug, Clone)]
pub(crate) struct Welcome {
    pub(crate) name: String,
    pub(crate) active: ChanId,
    pub(crate) passive: ChanId,
}

pub(crate) struct Remote {
    stream: Stream,
    /// Registry requests and store operations waiting for their replies: one table,
    /// one id space (a blocked thread may read the socket itself while it waits; a
    /// task's call fails at its deadline, see `flusher_loop`).
    calls: Calls<Answer>,
    outbox: Outbox,
    flusher: OnceLock<Thread>,
    driver: OnceLock<Driver>,
    lost: AtomicBool,
    exit_on_disconnect: bool,
    max_frame: usize,
    /// The read role.
    role: Mutex<ReadBuffer>,
    /// Who may read, and how they hand the role over (see [`ReadRole`]).
    read_role: ReadRole,
    /// Whether a thread waiting for a store reply polls before it blocks (see
    /// [`Remote::read_reply`]): never on a single processor, where it would only delay
    /// the hub.
    spin_allowed: bool,
    spin: AtomicBool,
}

impl OutboxSink for Remote {
    fn write(&self, buf: &[u8]) -> std::io::Result<usize> {
        self.stream.write(buf)
    }

    fn write_vectored(&self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        self.stream.write_vectored(bufs)
    }

    fn wake_flusher(&self) {
        if let Some(t) = self.flusher.get() {
            t.unpark();
        }
    }
}

impl Remote {
    fn driver(&self) -> &Driver {
        self.driver
            .get()
            .expect("the driver is set before any reading starts")
    }

    fn push_control(&self, frame: &Frame) -> Result<(), LinkError> {
        self.outbox
            .push::<()>(self, |buf| {
                encode_control(buf, frame);
                Ok(())
            })
            .map_err(|_| LinkError::Disconnected)
    }

    /// Sends a registry request; `waiter` gets its reply.
    fn send_request(&self, request: Request, waiter: Waiter<Answer>) -> Result<u32, LinkError> {
        let id = self.calls.next_id();
        self.calls.insert(id, waiter);
        if self.lost.load(Ordering::Acquire) {
            self.calls.remove(id);
            return Err(LinkError::Disconnected);
        }
        if let Err(e) = self.push_control(&Frame::Request { id, body: request }) {
            self.calls.remove(id);
            return Err(e);
        }
        Ok(id)
    }

    /// Waits on this thread for the answer to call `id`, reading the socket itself when
    /// no other thread is waiting to, until `deadline`.
    fn wait_answer(
        &self,
        id: u32,
        slot: &Slot<Answer>,
        deadline: Instant,
    ) -> Result<Answer, LinkError> {
        let ready = || slot.is_ready() || self.lost.load(Ordering::Acquire);
        loop {
            if let Some(a) = slot.take() {
                return Ok(a);
            }
            if self.lost.load(Ordering::Acquire) {
                return Err(LinkError::Disconnected);
            }
            let now = Instant::now();
            if now >= deadline {
                self.calls.remove(id);
                return slot.take().ok_or(LinkError::Timeout);
            }
            // Read the reply on this thread if no other thread is waiting to; otherwise
            // whoever reads it wakes this thread. Many threads taking turns at the
            // socket would only pass the role around.
            let pumped = !self.read_role.others_want(0) && self.read_reply(&ready, deadline);
            if pumped {
                // Others wait for replies too: let the reader thread take over at once.
                if !self.calls.is_empty() {
                    self.read_role.read_on();
                }
            } else if !ready() {
                std::thread::park_timeout((deadline - now).min(Duration::from_millis(5)));
            }
        }
    }

    /// Sends a store operation; `waiter` (if any) gets its reply.
    fn send_op(&self, op: &Op, waiter: Option<Waiter<Answer>>) -> Result<u32, LinkError> {
        let id = self.calls.next_id();
        let quiet = waiter.is_none();
        let mut coalesce = false;
        if let Some(w) = waiter {
            let task = matches!(w, Waiter::Task(..));
            coalesce = self.calls.insert(id, w) > COALESCE_IN_FLIGHT && task;
        }
        if self.lost.load(Ordering::Acquire) {
            self.calls.remove(id);
            return Err(LinkError::Disconnected);
        }
        let encode = |buf: &mut Vec<u8>| {
            let start = buf.len();
            encode_op(buf, id, quiet, op);
            // The length prefix does not count.
            let size = buf.len() - start - 4;
            if size > self.max_frame {
                buf.truncate(start);
                return Err(LinkError::TooLarge {
                    size,
                    max: self.max_frame,
                });
            }
            Ok(())
        };
        let pushed = if coalesce {
            self.outbox.push_coalesced(self, encode)
        } else {
            self.outbox.push(self, encode)
        };
        if let Err(e) = pushed {
            self.calls.remove(id);
            return Err(match e {
                Push::Encode(e) => e,
                Push::Broken(_) => LinkError::Disconnected,
            });
        }
        Ok(id)
    }

    /// Appends a frame that `encode` writes, refusing one larger than the hub accepts.
    fn push_checked(
        &self,
        coalesce: bool,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), TransportError>,
    ) -> Result<(), TransportError> {
        let max = self.max_frame;
        let encode = |buf: &mut Vec<u8>| {
            let start = buf.len();
            encode(buf)?;
            // The length prefix does not count.
            let size = buf.len() - start - 4;
            if size > max {
                buf.truncate(start);
                return Err(TransportError::TooLarge { size, max });
            }
            Ok(())
        };
        let pushed = if coalesce {
            self.outbox.push_coalesced(self, encode)
        } else {
            self.outbox.push(self, encode)
        };
        pushed.map_err(|e| match e {
            Push::Encode(e) => e,
            Push::Broken(_) => TransportError::Broken,
        })
    }

    /// One read from the socket, which blocks until it has something (or until
    /// [`READ_TIMEOUT`]) unless `nowait`.
    fn read_some(&self, st: &mut ReadBuffer, nowait: bool) -> Result<(), String> {
        st.read_from(&self.stream, nowait)
            .map_err(|reason| reason.unwrap_or_else(|| "the hub closed the connection".into()))
    }

    /// The connection is gone: fail everything, once.
    fn lose(&self, reason: &str) {
        if self.lost.swap(true, Ordering::AcqRel) {
            return;
        }
        self.calls.fail_all();
        self.outbox.break_with(std::io::ErrorKind::BrokenPipe);
        self.wake_flusher();
        self.driver().connection_lost();
        let _ = self.stream.socket().shutdown(std::net::Shutdown::Both);
        self.read_role.wake_all();
        if self.exit_on_disconnect {
            eprintln!("yukicomm: lost the hub connection ({reason}); exiting");
            std::process::exit(70);
        }
        tracing::warn!("lost the hub connection: {reason}");
    }

    /// Reads the socket on this thread until `ready` holds: for a thread waiting for a
    /// store reply, which the hub sends at once. Returns `false` without reading if
    /// another thread holds the role.
    ///
    /// It first polls the socket without blocking, for up to [`SPIN`]: a reply usually
    /// comes within a round trip, and a thread that stays on its core takes it without
    /// a wake-up, which is most of the round trip's cost. When the last wait outlasted
    /// that, it blocks at once instead (a blocking read also saves the `poll` before it,
    /// and the wake-up that goes with it), and spins again once a reply comes quickly.
    /// Each blocking read returns within a round trip or at the socket's receive timeout.
    fn read_reply(&self, ready: &dyn Fn() -> bool, deadline: Instant) -> bool {
        self.read_role.want();
        self.read_role.poke_if_polling();
        let Some(mut st) = self.role.try_lock_for(Duration::from_micros(200)) else {
            self.read_role.release(0);
            return false;
        };
        let start = Instant::now();
        let mut spin_until = self.spin.load(Ordering::Relaxed).then(|| start + SPIN);
        let mut handled = 0;
        loop {
            match st.process(self) {
                Ok(n) => handled += n,
                Err(reason) => {
                    drop(st);
                    self.lose(&reason);
                    break;
                }
            }
            // Step aside for a receiver that wants the role, as a poller would.
            if ready() || self.read_role.others_want(1) {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let spinning = spin_until.is_some_and(|until| now < until);
            if !spinning && spin_until.take().is_some() {
                self.spin.store(false, Ordering::Relaxed);
            }
            if let Err(reason) = self.read_some(&mut st, spinning) {
                drop(st);
                self.lose(&reason);
                break;
            }
        }
        if self.spin_allowed && ready() && start.elapsed() < SPIN {
            self.spin.store(true, Ordering::Relaxed);
        }
        self.read_role.release(handled);
        true
    }

    /// The background reader: holds the read role unless a receiver wants it.
    fn background_reader(&self) {
        let lost = || self.lost.load(Ordering::Acquire);
        let reason = background(&self.stream, &self.read_role, &self.role, self, &lost);
        if !lost() {
            self.lose(reason.as_deref().unwrap_or("the hub closed the connection"));
        }
    }
}

impl FrameHandler for Remote {
    /// Replies go to their callers; everything else, in order, to the node. A reply to
    /// a store operation sent without waiting (always a failure) goes to the node too.
    fn frames(&self, frames: &mut Vec<Frame>) -> Result<(), String> {
        self.driver()
            .dispatch_all(frames.drain(..).filter_map(|f| match f {
                Frame::Reply { id, body } => {
                    // A reply nobody waits for any more (given up) is dropped.
                    let _ = self.calls.complete(id, Answer::Reply(body));
                    None
                }
                Frame::OpReply { id, reply } => match self.calls.complete(id, Answer::Op(reply)) {
                    Some(Answer::Op(reply)) => Some(Frame::OpReply { id, reply }),
                    _ => None,
                },
                Frame::CallReply { id, status, body } => {
                    // A reply to a call given up meanwhile is dropped.
                    let _ = self.calls.complete(id, Answer::Call(status, body));
                    None
                }
                other => Some(other),
            }));
        Ok(())
    }
}

impl Transport for Remote {
    fn send_msg(&self, chan: ChanId, to: End, encode: EncodeFn<'_>) -> Result<(), TransportError> {
        let max = self.max_frame;
        self.outbox
            .push(self, |buf| {
                let start = buf.len();
                encode_msg(buf, chan, to, encode)?;
                let size = buf.len() - start - 4;
                if size > max {
                    buf.truncate(start);
                    return Err(TransportError::TooLarge { size, max });
                }
                Ok(())
            })
            .map_err(|e| match e {
                Push::Encode(e) => e,
                Push::Broken(_) => TransportError::Broken,
            })
    }

    fn send_credit(&self, chan: ChanId, end: End, n: u32, bytes: u64) {
        let _ = self.outbox.push::<()>(self, |buf| {
            encode_credit(buf, chan, end, n, bytes);
            Ok(())
        });
    }

    fn notice(&self, notice: Notice) {
        let _ = self.push_control(&Frame::Notice(notice));
    }

    fn request(&self, request: Request, timeout: Duration) -> Result<Reply, LinkError> {
        let deadline = Instant::now() + timeout;
        let slot = Slot::for_this_thread();
        let id = self.send_request(request, Waiter::Thread(slot.clone()))?;
        self.wait_answer(id, &slot, deadline)?.into_reply()
    }

    fn request_async(
        &self,
        request: Request,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Reply, LinkError>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        // No timer per call: the flusher thread fails overdue ones.
        let sent = self.send_request(request, Waiter::Task(tx, Instant::now() + timeout));
        async move {
            sent?;
            match rx.await {
                Ok(Ok(answer)) => answer.into_reply(),
                Ok(Err(e)) => Err(e.into()),
                Err(_) => Err(LinkError::Disconnected),
            }
        }
        .boxed()
    }

    fn store_call(&self, op: Op, timeout: Duration) -> Result<OpReply, LinkError> {
        let deadline = Instant::now() + timeout;
        let slot = Slot::for_this_thread();
        let id = self.send_op(&op, Some(Waiter::Thread(slot.clone())))?;
        self.wait_answer(id, &slot, deadline)?.into_op()
    }

    fn store_call_async(&self, op: Op, timeout: Duration) -> OpFuture {
        let (tx, rx) = tokio::sync::oneshot::channel();
        // No timer per call: the flusher thread fails overdue ones.
        match self.send_op(&op, Some(Waiter::Task(tx, Instant::now() + timeout))) {
            Ok(_) => OpFuture::waiting(rx),
            Err(e) => OpFuture::ready(Err(e)),
        }
    }

    fn store_send(&self, op: Op) -> Result<Option<OpReply>, LinkError> {
        self.send_op(&op, None).map(|_| None)
    }

    fn call(
        &self,
        head: CallHead<'_>,
        body: BodyFn<'_>,
        waiter: Waiter<Answer>,
    ) -> Result<u32, TransportError> {
        let id = self.calls.next_id();
        let task = matches!(waiter, Waiter::Task(..));
        let coalesce = self.calls.insert(id, waiter) > COALESCE_IN_FLIGHT && task;
        if self.lost.load(Ordering::Acquire) {
            self.calls.remove(id);
            return Err(TransportError::Broken);
        }
        let pushed = self.push_checked(coalesce, |buf| {
            encode_call(
                buf,
                id,
                head.timeout_ms,
                head.flags,
                head.service,
                head.method,
                &mut *body,
            )
        });
        match pushed {
            Ok(()) => Ok(id),
            Err(e) => {
                self.calls.remove(id);
                Err(e)
            }
        }
    }

    fn wait(&self, id: u32, slot: &Slot<Answer>, deadline: Instant) -> Result<Answer, LinkError> {
        self.wait_answer(id, slot, deadline)
    }

    fn cancel(&self, id: u32) {
        // Sent even if the waiter is gone (its deadline passed): the hub ignores the
        // cancellation of a call it already answered.
        self.calls.remove(id);
        let _ = self.outbox.push::<()>(self, |buf| {
            encode_cancel(buf, id);
            Ok(())
        });
    }

    fn reply(
        &self,
        id: u32,
        status: CallStatus,
        body: BodyFn<'_>,
        more: bool,
    ) -> Result<(), TransportError> {
        self.push_checked(more, |buf| encode_call_reply(buf, id, status, &mut *body))
    }

    fn pump(&self, _key: EndRef, ready: &dyn Fn() -> bool, deadline: Option<Instant>) -> Pump {
        let lost = || self.lost.load(Ordering::Acquire);
        if lost() {
            return Pump::Unavailable;
        }
        let pump = reader::Pump {
            stream: &self.stream,
            role: &self.read_role,
            side: &self.role,
            handler: self,
            closed: &lost,
            also_wake: None,
        };
        match reader::pump(&pump, ready, deadline) {
            Pumped::Ready => Pump::Ready,
            Pumped::Timeout => Pump::Timeout,
            Pumped::Unavailable => Pump::Unavailable,
            Pumped::Ended(reason) => {
                self.lose(reason.as_deref().unwrap_or("the hub closed the connection"));
                // Every waiter is woken: look at the queue.
                Pump::Ready
            }
        }
    }
}

/// Connects to the hub at `path` as child `name`, and starts the reader and flusher.
pub(crate) fn connect(
    path: &str,
    name: &str,
    token: &str,
    runtime: tokio::runtime::Handle,
    exit_on_disconnect: bool,
) -> Result<(Node, Welcome), ConnectError> {
    let stream = UnixStream::connect(path).map_err(|source| ConnectError::Io {
        path: path.to_string(),
        source,
    })?;
    join(stream, path, name, token, runtime, exit_on_disconnect, true)
}

/// Says hello as child `name` on `stream`, a connection to the hub (`path` names it in
/// errors), and starts the reader and flusher.
pub(crate) fn join(
    stream: UnixStream,
    path: &str,
    name: &str,
    token: &str,
    runtime: tokio::runtime::Handle,
    exit_on_disconnect: bool,
    shared_memory: bool,
) -> Result<(Node, Welcome), ConnectError> {
    let io = |source| ConnectError::Io {
        path: path.to_string(),
        source,
    };
    yukicomm_link::sys::set_send_buffer(&stream, SEND_BUFFER);
    // Every wait of the opening has a deadline: a hub that does not answer is an
    // error, not a hang.
    let deadline = Instant::now() + OPENING_TIMEOUT;
    stream.set_read_timeout(Some(OPENING_TIMEOUT)).map_err(io)?;
    let mut stream = Stream::new(stream, Some(READ_TIMEOUT));
    let (spin, busy_poll) = yukicomm_wire::ring_wait_from_env();
    stream.set_spin(spin, busy_poll);
    if shared_memory && shm::SUPPORTED && shared_memory_wanted() {
        move_to_shared_memory(&stream).map_err(|e| {
            io(std::io::Error::new(
                e.kind(),
                format!(
                    "cannot move the connection into the hub's shared memory ({e}); \
                     {ENV_SHM}=0 keeps it on the socket"
                ),
            ))
        })?;
    }

    let mut hello = Vec::new();
    encode_control(
        &mut hello,
        &Frame::Request {
            id: 0,
            body: Request::Hello {
                version: PROTOCOL_VERSION,
                name: name.to_string(),
                token: token.to_string(),
            },
        },
    );
    stream.write_all(&hello, Some(deadline)).map_err(io)?;

    let decoder = Decoder::new(yukicomm_wire::DEFAULT_MAX_FRAME);
    let mut buf = BytesMut::with_capacity(READ_SIZE);
    let reply = loop {
        if let Some(frame) = decoder
            .decode(&mut buf)
            .map_err(|e| ConnectError::Protocol(e.to_string()))?
        {
            break frame;
        }
        if Instant::now() >= deadline {
            return Err(io(std::io::ErrorKind::TimedOut.into()));
        }
        match stream.read_into(&mut buf, 4096, false) {
            Ok(0) => {
                return Err(ConnectError::Protocol(
                    "the hub closed the connection".into(),
                ))
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(io(e)),
        }
    };
    // Reads that block (see `Remote::read_reply`) come back at least this often.
    stream
        .socket()
        .set_read_timeout(Some(READ_TIMEOUT))
        .map_err(io)?;
    let (window, window_bytes, max_frame, welcome) = match reply {
        Frame::Reply {
            body:
                Reply::Welcome {
                    name,
                    window,
                    window_bytes,
                    max_frame,
                    active,
                    passive,
                },
            ..
        } => (
            window,
            window_bytes,
            max_frame,
            Welcome {
                name,
                active,
                passive,
            },
        ),
        Frame::Reply {
            body: Reply::Error { code, message },
            ..
        } => return Err(ConnectError::Refused { code, message }),
        other => return Err(ConnectError::Protocol(format!("{other:?}"))),
    };

    let read_role = ReadRole::new().map_err(io)?;
    let spin_allowed = std::thread::available_parallelism().is_ok_and(|n| n.get() > 1);
    let driver = Driver::new(window, window_bytes, runtime, Duration::from_secs(30));
    let remote = Arc::new(Remote {
        stream,
        calls: Calls::default(),
        outbox: Outbox::new(BURST_WINDOW),
        flusher: OnceLock::new(),
        driver: OnceLock::new(),
        lost: AtomicBool::new(false),
        exit_on_disconnect,
        max_frame: max_frame as usize,
        // What was read after the welcome stays first in line.
        role: Mutex::new(ReadBuffer::starting_with(buf, max_frame.max(1024))),
        read_role,
        spin_allowed,
        spin: AtomicBool::new(spin_allowed),
    });
    let _ = remote.driver.set(driver.clone());
    driver.set_transport(remote.clone());

    let flusher_remote = remote.clone();
    let flusher = std::thread::Builder::new()
        .name("yukicomm-flusher".into())
        .spawn(move || flusher_loop(&flusher_remote))
        .map_err(io)?;
    let _ = remote.flusher.set(flusher.thread().clone());

    std::thread::Builder::new()
        .name("yukicomm-reader".into())
        .spawn(move || remote.background_reader())
        .map_err(io)?;
    Ok((driver.node(), welcome))
}

/// Writes what accumulated while another write was under way, and fails the calls of
/// tasks whose deadline passed (the calls table wakes it for an earlier deadline).
fn flusher_loop(remote: &Remote) {
    remote.calls.set_timer(std::thread::current());
    loop {
        let now = Instant::now();
        let next = remote.calls.expire(now);
        let nap = next.map_or(IDLE_NAP, |d| d.saturating_duration_since(now).min(IDLE_NAP));
        std::thread::park_timeout(nap);
        while let Some(data) = remote.outbox.take_for_flush() {
            let result = write_waiting(remote, &data);
            remote.outbox.flushed(data, result.err().map(|e| e.kind()));
        }
        if remote.lost.load(Ordering::Acquire) {
            return;
        }
    }
}

/// Writes all of `data` for the flusher, waiting for room in the rings as needed (a
/// socket blocks by itself), until the connection is lost.
fn write_waiting(remote: &Remote, data: &yukicomm_link::Pending) -> std::io::Result<()> {
    let mut written = 0;
    while written < data.len() {
        match data.write_from(written, &mut &remote.stream) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if remote.lost.load(Ordering::Acquire) {
                    return Err(std::io::ErrorKind::BrokenPipe.into());
                }
                remote.stream.wait_room(IDLE_NAP)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Whether this process lets its hub connection move into shared memory: yes unless
/// [`ENV_SHM`] is `0`.
fn shared_memory_wanted() -> bool {
    std::env::var_os(ENV_SHM).is_none_or(|v| v != "0")
}

/// Asks the hub, before the hello, to move the connection into shared memory, and does
/// so when it agrees (see `docs/PROTOCOL.md`, section 20). A hub that refuses leaves it
/// on the socket; an answer that cannot be used is an error.
fn move_to_shared_memory(stream: &Stream) -> std::io::Result<()> {
    use std::io::{Error, ErrorKind};
    let mut ask = Vec::new();
    encode_control(
        &mut ask,
        &Frame::Request {
            id: 0,
            body: Request::SharedMemory {
                capacity: shm::DEFAULT_CAPACITY as u32,
            },
        },
    );
    let mut socket = stream.socket();
    socket.write_all(&ask)?;
    let decoder = Decoder::new(yukicomm_wire::DEFAULT_MAX_FRAME);
    let mut buf = BytesMut::with_capacity(4096);
    let mut fds = Vec::new();
    let answer = loop {
        if let Some(frame) = decoder
            .decode(&mut buf)
            .map_err(|e| Error::new(ErrorKind::InvalidData, e.to_string()))?
        {
            break frame;
        }
        let mut chunk = [0u8; 4096];
        let n = shm::recv_fds(stream.socket().as_fd(), &mut chunk, &mut fds, 3)?;
        if n == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    if !buf.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidData,
            "the hub sent more than its shared-memory answer",
        ));
    }
    match answer {
        Frame::Reply {
            body: Reply::SharedMemory { .. },
            ..
        } => {
            let [region, room0, room1]: [std::os::fd::OwnedFd; 3] =
                fds.try_into().map_err(|fds: Vec<_>| {
                    Error::new(
                        ErrorKind::InvalidData,
                        format!(
                            "the hub's shared-memory answer came with {} descriptors, not 3",
                            fds.len()
                        ),
                    )
                })?;
            let region = Region::open(region)?;
            stream.use_shm(region, Side::B, Rooms::for_side(Side::B, room0, room1));
            Ok(())
        }
        Frame::Reply {
            body: Reply::Error { message, .. },
            ..
        } => {
            tracing::debug!("the connection stays on its socket: {message}");
            Ok(())
        }
        other => Err(Error::new(
            ErrorKind::InvalidData,
            format!("unexpected answer to the shared-memory request: {other:?}"),
        )),
    }
}
