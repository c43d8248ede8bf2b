//! A child's connection to the hub: one Unix stream socket, multiplexing every channel,
//! request and event.
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

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
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
    Request, PROTOCOL_VERSION,
};

use crate::error::{ConnectError, LinkError};
use crate::node::Node;
use crate::transport::{Driver, EncodeFn, OpFuture, Pump, Transport, TransportError};
use yukicomm_link::role::{ReadRole, LINGER};
use yukicomm_link::sys::{fired, pollfd, read_into, read_into_nowait, wait_readable};

/// Frames pushed closer together than this are coalesced into one write.
const BURST_WINDOW: Duration = Duration::from_micros(3);
/// The socket send buffer asked for (see [`yukicomm_link::sys::set_send_buffer`]).
const SEND_BUFFER: usize = 1 << 20;
/// How often overdue store operations of tasks are looked for.
const EXPIRY_CHECK: Duration = Duration::from_millis(500);
/// The longest a blocking read of the socket waits before its caller looks around.
const READ_TIMEOUT: Duration = Duration::from_millis(50);
/// Bytes read from the socket at a time.
const READ_SIZE: usize = 256 * 1024;
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

/// The reading side, owned by whoever holds the read role.
struct ReadState {
    buf: BytesMut,
    decoder: Decoder,
    /// Decoded frames waiting to be handed over (reused).
    frames: Vec<Frame>,
}

/// Who waits for the reply to a store operation.
enum OpWaiter {
    /// A blocked thread, which may be reading the socket itself.
    Thread(Arc<OpSlot>),
    /// A task.
    /// A task; it fails with `Timeout` at its deadline (see `expire_ops`).
    Task(
        tokio::sync::oneshot::Sender<Result<OpReply, LinkError>>,
        Instant,
    ),
}

/// Where a blocked thread's reply lands.
struct OpSlot {
    reply: Mutex<Option<OpReply>>,
    thread: Thread,
}

pub(crate) struct Remote {
    stream: UnixStream,
    /// Store operations waiting for their replies, by id.
    ops: Mutex<rustc_hash::FxHashMap<u32, OpWaiter>>,
    next_op: AtomicU32,
    outbox: Outbox,
    flusher: OnceLock<Thread>,
    driver: OnceLock<Driver>,
    pending: Mutex<HashMap<u32, flume::Sender<Reply>>>,
    next_id: AtomicU32,
    lost: AtomicBool,
    exit_on_disconnect: bool,
    max_frame: usize,
    /// The read role.
    role: Mutex<ReadState>,
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
        (&self.stream).write(buf)
    }

    fn write_vectored(&self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        (&self.stream).write_vectored(bufs)
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

    fn start_request(&self, request: Request) -> Result<(u32, flume::Receiver<Reply>), LinkError> {
        let mut id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if id == 0 {
            id = self.next_id.fetch_add(1, Ordering::Relaxed);
        }
        let (tx, rx) = flume::bounded(1);
        self.pending.lock().insert(id, tx);
        if self.lost.load(Ordering::Acquire) {
            self.pending.lock().remove(&id);
            return Err(LinkError::Disconnected);
        }
        if let Err(e) = self.push_control(&Frame::Request { id, body: request }) {
            self.pending.lock().remove(&id);
            return Err(e);
        }
        Ok((id, rx))
    }

    /// Hands a store reply to whoever waits for it.
    fn op_reply(&self, id: u32, reply: OpReply) {
        match self.ops.lock().remove(&id) {
            Some(OpWaiter::Thread(slot)) => {
                *slot.reply.lock() = Some(reply);
                slot.thread.unpark();
            }
            Some(OpWaiter::Task(tx, _)) => {
                let _ = tx.send(Ok(reply));
            }
            // A reply to an operation sent without waiting is always a failure.
            None => self.driver().dispatch(Frame::OpReply { id, reply }),
        }
    }

    /// Fails the tasks whose store operations are past their deadline.
    fn expire_ops(&self) {
        let now = Instant::now();
        let mut ops = self.ops.lock();
        let overdue: Vec<u32> = ops
            .iter()
            .filter(|(_, w)| matches!(w, OpWaiter::Task(_, d) if *d <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in overdue {
            if let Some(OpWaiter::Task(tx, _)) = ops.remove(&id) {
                let _ = tx.send(Err(LinkError::Timeout));
            }
        }
    }

    /// Sends a store operation; `waiter` (if any) gets its reply.
    fn send_op(&self, op: &Op, waiter: Option<OpWaiter>) -> Result<u32, LinkError> {
        let id = self.next_op.fetch_add(1, Ordering::Relaxed);
        let quiet = waiter.is_none();
        let mut coalesce = false;
        if let Some(w) = waiter {
            let task = matches!(w, OpWaiter::Task(..));
            let mut ops = self.ops.lock();
            ops.insert(id, w);
            coalesce = task && ops.len() > COALESCE_IN_FLIGHT;
        }
        if self.lost.load(Ordering::Acquire) {
            self.ops.lock().remove(&id);
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
            self.ops.lock().remove(&id);
            return Err(match e {
                Push::Encode(e) => e,
                Push::Broken(_) => LinkError::Disconnected,
            });
        }
        Ok(id)
    }

    /// Decodes and hands over every complete frame in the buffer; returns how many.
    fn handle_buffered(&self, st: &mut ReadState) -> Result<usize, String> {
        let mut n = 0;
        let result = loop {
            match st.decoder.decode(&mut st.buf) {
                Ok(Some(Frame::Reply { id, body })) => {
                    if let Some(tx) = self.pending.lock().remove(&id) {
                        let _ = tx.send(body);
                    }
                }
                Ok(Some(Frame::OpReply { id, reply })) => self.op_reply(id, reply),
                Ok(Some(frame)) => st.frames.push(frame),
                Ok(None) => break Ok(n),
                Err(e) => break Err(format!("bad frame from the hub: {e}")),
            }
            n += 1;
        };
        // Frames decoded before a bad one are still handed over.
        self.driver().dispatch_all(st.frames.drain(..));
        result
    }

    /// One read from the socket, which blocks until it has something (or until
    /// [`READ_TIMEOUT`]) unless `nowait`.
    fn read_some(&self, st: &mut ReadState, nowait: bool) -> Result<(), String> {
        let fd = &self.stream;
        let read = if nowait {
            read_into_nowait(fd, &mut st.buf, READ_SIZE)
        } else {
            read_into(fd, &mut st.buf, READ_SIZE)
        };
        match read {
            Ok(0) if st.buf.is_empty() => Err("the hub closed the connection".into()),
            Ok(0) => Err("the hub closed the connection mid-frame".into()),
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// The connection is gone: fail everything, once.
    fn lose(&self, reason: &str) {
        if self.lost.swap(true, Ordering::AcqRel) {
            return;
        }
        self.pending.lock().clear();
        for (_, w) in self.ops.lock().drain() {
            if let OpWaiter::Thread(slot) = w {
                slot.thread.unpark();
            }
        }
        self.outbox.break_with(std::io::ErrorKind::BrokenPipe);
        self.wake_flusher();
        self.driver().connection_lost();
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
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
            match self.handle_buffered(&mut st) {
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
        let mut fds = [
            pollfd(self.stream.as_fd()),
            pollfd(self.read_role.wake_fd()),
        ];
        let mut nap = LINGER;
        while !self.lost.load(Ordering::Acquire) {
            if !self.read_role.background_may_read(&mut nap) {
                continue;
            }
            let mut st = self.role.lock();
            if !self.read_role.start_polling(0) {
                continue;
            }
            let ready = wait_readable(&mut fds, None);
            self.read_role.stop_polling();
            if fired(&fds[1]) {
                self.read_role.drain_wakes();
            }
            let result = match ready {
                Err(e) => Err(e.to_string()),
                Ok(_) if fired(&fds[0]) => self
                    .read_some(&mut st, false)
                    .and_then(|()| self.handle_buffered(&mut st).map(drop)),
                Ok(_) => Ok(()),
            };
            if let Err(reason) = result {
                drop(st);
                self.lose(&reason);
                return;
            }
        }
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
        let (id, rx) = self.start_request(request)?;
        match rx.recv_timeout(timeout) {
            Ok(reply) => Ok(reply),
            Err(flume::RecvTimeoutError::Timeout) => {
                self.pending.lock().remove(&id);
                Err(LinkError::Timeout)
            }
            Err(flume::RecvTimeoutError::Disconnected) => Err(LinkError::Disconnected),
        }
    }

    fn request_async(
        &self,
        request: Request,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Reply, LinkError>> {
        let started = self.start_request(request);
        async move {
            let (_, rx) = started?;
            match tokio::time::timeout(timeout, rx.recv_async()).await {
                Ok(Ok(reply)) => Ok(reply),
                Ok(Err(_)) => Err(LinkError::Disconnected),
                Err(_) => Err(LinkError::Timeout),
            }
        }
        .boxed()
    }

    fn store_call(&self, op: Op, timeout: Duration) -> Result<OpReply, LinkError> {
        let slot = Arc::new(OpSlot {
            reply: Mutex::new(None),
            thread: std::thread::current(),
        });
        let id = self.send_op(&op, Some(OpWaiter::Thread(slot.clone())))?;
        let deadline = Instant::now() + timeout;
        let ready = || slot.reply.lock().is_some() || self.lost.load(Ordering::Acquire);
        loop {
            if let Some(r) = slot.reply.lock().take() {
                return Ok(r);
            }
            if self.lost.load(Ordering::Acquire) {
                return Err(LinkError::Disconnected);
            }
            let now = Instant::now();
            if now >= deadline {
                self.ops.lock().remove(&id);
                return slot.reply.lock().take().ok_or(LinkError::Timeout);
            }
            // Read the reply on this thread if no other thread is waiting to; otherwise
            // whoever reads it wakes this thread. Many threads taking turns at the
            // socket would only pass the role around.
            let pumped = !self.read_role.others_want(0) && self.read_reply(&ready, deadline);
            if pumped {
                // Others wait for replies too: let the reader thread take over at once.
                if !self.ops.lock().is_empty() {
                    self.read_role.read_on();
                }
            } else if !ready() {
                std::thread::park_timeout((deadline - now).min(Duration::from_millis(5)));
            }
        }
    }

    fn store_call_async(&self, op: Op, timeout: Duration) -> OpFuture {
        let (tx, rx) = tokio::sync::oneshot::channel();
        // No timer per operation: the flusher thread fails overdue ones (`expire_ops`).
        match self.send_op(&op, Some(OpWaiter::Task(tx, Instant::now() + timeout))) {
            Ok(_) => OpFuture::waiting(rx),
            Err(e) => OpFuture::ready(Err(e)),
        }
    }

    fn store_send(&self, op: Op) -> Result<Option<OpReply>, LinkError> {
        self.send_op(&op, None).map(|_| None)
    }

    fn pump(&self, _key: EndRef, ready: &dyn Fn() -> bool, deadline: Option<Instant>) -> Pump {
        if self.lost.load(Ordering::Acquire) {
            return Pump::Unavailable;
        }
        self.read_role.want();
        let mut routed = 0;
        let result = 'outer: loop {
            if ready() {
                break Pump::Ready;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break Pump::Timeout;
            }
            // Whoever holds the role steps aside when it is waiting in `poll`: ask it to.
            // Meanwhile look at our own queue now and then.
            self.read_role.poke_if_polling();
            let Some(mut st) = self.role.try_lock_for(Duration::from_micros(50)) else {
                continue;
            };
            let mut fds = [
                pollfd(self.stream.as_fd()),
                pollfd(self.read_role.wake_fd()),
            ];
            loop {
                match self.handle_buffered(&mut st) {
                    Ok(n) => routed += n,
                    Err(reason) => {
                        drop(st);
                        self.lose(&reason);
                        break 'outer Pump::Ready;
                    }
                }
                if ready() {
                    break 'outer Pump::Ready;
                }
                let waited = if self.read_role.start_polling(1) {
                    let w = wait_readable(&mut fds, deadline).map(Some);
                    self.read_role.stop_polling();
                    w
                } else {
                    // Someone else wants the role: let them have it, and wait on our
                    // queue, which whoever reads fills.
                    Ok(None)
                };
                match waited {
                    Ok(None) => break 'outer Pump::Unavailable,
                    Ok(Some(true)) => {}
                    Ok(Some(false)) => break 'outer Pump::Timeout,
                    Err(e) => {
                        drop(st);
                        self.lose(&e.to_string());
                        break 'outer Pump::Ready;
                    }
                }
                if fired(&fds[1]) {
                    self.read_role.drain_wakes();
                    if self.read_role.others_want(1) {
                        break 'outer Pump::Unavailable;
                    }
                }
                if fired(&fds[0]) {
                    if let Err(reason) = self.read_some(&mut st, false) {
                        drop(st);
                        self.lose(&reason);
                        break 'outer Pump::Ready;
                    }
                }
            }
        };
        self.read_role.release(routed);
        result
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
    join(stream, path, name, token, runtime, exit_on_disconnect)
}

/// Says hello as child `name` on `stream`, a connection to the hub (`path` names it in
/// errors), and starts the reader and flusher.
pub(crate) fn join(
    mut stream: UnixStream,
    path: &str,
    name: &str,
    token: &str,
    runtime: tokio::runtime::Handle,
    exit_on_disconnect: bool,
) -> Result<(Node, Welcome), ConnectError> {
    let io = |source| ConnectError::Io {
        path: path.to_string(),
        source,
    };
    yukicomm_link::sys::set_send_buffer(&stream, SEND_BUFFER);

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
    stream.write_all(&hello).map_err(io)?;

    // The welcome, with a deadline: a hub that does not answer is an error, not a hang.
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io)?;
    let decoder = Decoder::new(yukicomm_wire::DEFAULT_MAX_FRAME);
    let mut buf = BytesMut::with_capacity(READ_SIZE);
    let reply = loop {
        if let Some(frame) = decoder
            .decode(&mut buf)
            .map_err(|e| ConnectError::Protocol(e.to_string()))?
        {
            break frame;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).map_err(io)?;
        if n == 0 {
            return Err(ConnectError::Protocol(
                "the hub closed the connection".into(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    // Reads that block (see `Remote::read_reply`) come back at least this often.
    stream.set_read_timeout(Some(READ_TIMEOUT)).map_err(io)?;
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
        ops: Mutex::new(rustc_hash::FxHashMap::default()),
        next_op: AtomicU32::new(1),
        outbox: Outbox::new(BURST_WINDOW),
        flusher: OnceLock::new(),
        driver: OnceLock::new(),
        pending: Mutex::new(HashMap::new()),
        next_id: AtomicU32::new(1),
        lost: AtomicBool::new(false),
        exit_on_disconnect,
        max_frame: max_frame as usize,
        role: Mutex::new(ReadState {
            buf,
            decoder: Decoder::new(max_frame.max(1024)),
            frames: Vec::new(),
        }),
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

fn flusher_loop(remote: &Remote) {
    let mut next_expiry = Instant::now() + EXPIRY_CHECK;
    loop {
        std::thread::park_timeout(EXPIRY_CHECK);
        if Instant::now() >= next_expiry {
            remote.expire_ops();
            next_expiry = Instant::now() + EXPIRY_CHECK;
        }
        while let Some(data) = remote.outbox.take_for_flush() {
            let result = data.write_all(&mut &remote.stream);
            remote.outbox.flushed(data, result.err().map(|e| e.kind()));
        }
        if remote.lost.load(Ordering::Acquire) {
            return;
        }
    }
}
