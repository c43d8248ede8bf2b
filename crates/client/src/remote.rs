//! A child's connection to the hub: one Unix stream socket, multiplexing every channel,
//! request and event.
//!
//! Two threads serve it: the *reader* blocks on the socket, decodes frames and hands them
//! to the [`Node`]; the *flusher* writes what senders buffered while another write was
//! in progress (see [`Outbox`]). Requests are pipelined: each carries an id, any number
//! may be in flight, and each waiter has a deadline. When the socket closes, every
//! channel end is marked disconnected, every waiter wakes, and (for a supervised child)
//! the process exits.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::Duration;

use bytes::BytesMut;
use futures::future::{BoxFuture, FutureExt};
use parking_lot::Mutex;
use yukicomm_wire::{
    encode_control, encode_credit, encode_msg, ChanId, Decoder, End, Frame, Notice, Outbox,
    OutboxSink, Push, Reply, Request, PROTOCOL_VERSION,
};

use crate::error::{ConnectError, LinkError};
use crate::node::{EncodeFn, Node, Transport, TransportError};

/// Frames pushed closer together than this are coalesced into one write.
const BURST_WINDOW: Duration = Duration::from_micros(3);

/// What the hub said in its welcome.
#[derive(Debug, Clone)]
pub(crate) struct Welcome {
    pub(crate) name: String,
    pub(crate) active: ChanId,
    pub(crate) passive: ChanId,
}

pub(crate) struct Remote {
    stream: UnixStream,
    outbox: Outbox,
    flusher: OnceLock<Thread>,
    pending: Mutex<HashMap<u32, flume::Sender<Reply>>>,
    next_id: AtomicU32,
    lost: std::sync::atomic::AtomicBool,
    max_frame: usize,
}

impl OutboxSink for Remote {
    fn write(&self, buf: &[u8]) -> std::io::Result<usize> {
        (&self.stream).write(buf)
    }

    fn wake_flusher(&self) {
        if let Some(t) = self.flusher.get() {
            t.unpark();
        }
    }
}

impl Remote {
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

    fn fail_all(&self) {
        self.lost.store(true, Ordering::Release);
        self.pending.lock().clear();
    }
}

impl Transport for Remote {
    fn send_msg(&self, chan: ChanId, to: End, encode: EncodeFn<'_>) -> Result<(), TransportError> {
        let max = self.max_frame;
        self.outbox
            .push(self, |buf| {
                let start = buf.len();
                encode_msg(buf, chan, to, encode).map_err(TransportError::Encode)?;
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

    fn send_credit(&self, chan: ChanId, end: End, n: u32) {
        let _ = self.outbox.push::<()>(self, |buf| {
            encode_credit(buf, chan, end, n);
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
}

/// Connects to the hub at `path` as child `name`, and starts the reader and flusher.
pub(crate) fn connect(
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
    let mut stream = UnixStream::connect(path).map_err(io)?;

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
    let mut buf = BytesMut::with_capacity(4096);
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
    stream.set_read_timeout(None).map_err(io)?;
    let (window, max_frame, welcome) = match reply {
        Frame::Reply {
            body:
                Reply::Welcome {
                    name,
                    window,
                    max_frame,
                    active,
                    passive,
                },
            ..
        } => (
            window,
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

    let node = Node::new(window, runtime, Duration::from_secs(30));
    let remote = Arc::new(Remote {
        stream: stream.try_clone().map_err(io)?,
        outbox: Outbox::new(BURST_WINDOW),
        flusher: OnceLock::new(),
        pending: Mutex::new(HashMap::new()),
        next_id: AtomicU32::new(1),
        lost: std::sync::atomic::AtomicBool::new(false),
        max_frame: max_frame as usize,
    });
    node.set_transport(remote.clone());

    let flusher_remote = remote.clone();
    let flusher = std::thread::Builder::new()
        .name("yukicomm-flusher".into())
        .spawn(move || flusher_loop(&flusher_remote))
        .map_err(io)?;
    let _ = remote.flusher.set(flusher.thread().clone());

    let reader_node = node.clone();
    std::thread::Builder::new()
        .name("yukicomm-reader".into())
        .spawn(move || {
            let reason = reader_loop(
                stream,
                buf,
                Decoder::new(max_frame.max(1024)),
                &remote,
                &reader_node,
            );
            remote.fail_all();
            remote.outbox.break_with(std::io::ErrorKind::BrokenPipe);
            remote.wake_flusher();
            reader_node.connection_lost();
            if exit_on_disconnect {
                eprintln!("yukicomm: lost the hub connection ({reason}); exiting");
                std::process::exit(70);
            }
            tracing::warn!("lost the hub connection: {reason}");
        })
        .map_err(io)?;
    Ok((node, welcome))
}

fn flusher_loop(remote: &Remote) {
    loop {
        std::thread::park();
        while let Some(data) = remote.outbox.take_for_flush() {
            let result = (&remote.stream).write_all(&data);
            remote.outbox.flushed(data, result.err().map(|e| e.kind()));
        }
        if remote.lost.load(Ordering::Acquire) {
            return;
        }
    }
}

fn reader_loop(
    mut stream: UnixStream,
    mut buf: BytesMut,
    decoder: Decoder,
    remote: &Remote,
    node: &Node,
) -> String {
    const READ_SIZE: usize = 64 * 1024;
    loop {
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(Frame::Reply { id, body })) => {
                    if let Some(tx) = remote.pending.lock().remove(&id) {
                        let _ = tx.send(body);
                    }
                }
                Ok(Some(frame)) => node.dispatch(frame),
                Ok(None) => break,
                Err(e) => return format!("bad frame from the hub: {e}"),
            }
        }
        buf.reserve(READ_SIZE);
        let spare = buf.spare_capacity_mut();
        // SAFETY: `read` writes at most `spare.len()` bytes into the uninitialised spare
        // capacity of `buf`, and we only mark as initialised the `n` bytes it reports.
        let n = unsafe { libc::read(stream.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len()) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return err.to_string();
        }
        if n == 0 {
            let _ = stream.flush();
            return if buf.is_empty() {
                "the hub closed the connection".into()
            } else {
                "the hub closed the connection mid-frame".into()
            };
        }
        // SAFETY: the kernel initialised `n` bytes of the spare capacity.
        unsafe { buf.set_len(buf.len() + n as usize) };
    }
}
