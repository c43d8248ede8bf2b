//! The read side of a connection, the same at both ends: the bytes read and not yet
//! decoded ([`ReadBuffer`]), one read, decoding and handing frames over to the owner of
//! the connection (a [`FrameHandler`]), and the background reader's loop
//! ([`background`]), which holds the read role (see [`crate::role`]) unless a thread
//! waiting for its own message wants it.

use std::io::ErrorKind;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use rustix::event::PollFd;

use bytes::BytesMut;
use parking_lot::Mutex;
use yukicomm_wire::{Decoder, Frame};

use crate::role::{ReadRole, LINGER};
use crate::stream::Stream;
use crate::sys::{drain, fired, pollfd, wait_readable};

/// Bytes read from the socket at a time (at least).
pub const READ_SIZE: usize = 256 * 1024;

/// What the owner of a connection does with the frames read from it.
pub trait FrameHandler {
    /// Takes the frames decoded by one read, in order (it drains `frames`). An error
    /// says why the connection must close.
    ///
    /// # Errors
    ///
    /// When a frame breaks the protocol.
    fn frames(&self, frames: &mut Vec<Frame>) -> Result<(), String>;
}

/// What the holder of the read role owns: the bytes read and not yet decoded.
#[derive(Debug)]
pub struct ReadBuffer {
    buf: BytesMut,
    decoder: Decoder,
    /// Decoded frames on their way to the handler (the allocation is reused).
    frames: Vec<Frame>,
}

impl ReadBuffer {
    /// An empty buffer that accepts frames of up to `max_frame` bytes.
    pub fn new(max_frame: u32) -> ReadBuffer {
        ReadBuffer {
            buf: BytesMut::with_capacity(READ_SIZE),
            decoder: Decoder::new(max_frame),
            frames: Vec::new(),
        }
    }

    /// A buffer that holds `read` already (bytes read past an earlier frame).
    pub fn starting_with(read: BytesMut, max_frame: u32) -> ReadBuffer {
        ReadBuffer {
            buf: read,
            decoder: Decoder::new(max_frame),
            frames: Vec::new(),
        }
    }

    /// One read from `stream` (never blocking if `nowait`; a blocking socket may return
    /// at its read timeout with nothing). `Err(None)` when the peer closed the
    /// connection cleanly (between frames), `Err(Some(reason))` when it failed.
    ///
    /// # Errors
    ///
    /// As above.
    pub fn read_from(&mut self, stream: &Stream, nowait: bool) -> Result<(), Option<String>> {
        match stream.read_into(&mut self.buf, READ_SIZE, nowait) {
            Ok(0) if self.buf.is_empty() => Err(None),
            Ok(0) => Err(Some("the peer closed the connection mid-frame".into())),
            Ok(_) => Ok(()),
            Err(e) if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::WouldBlock) => Ok(()),
            // A peer that dies with unread data resets the connection: a close.
            Err(e) if e.kind() == ErrorKind::ConnectionReset && self.buf.is_empty() => Err(None),
            Err(e) => Err(Some(e.to_string())),
        }
    }

    /// Whether nothing was read past the frames decoded so far.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Decodes the next frame, if one was read whole.
    ///
    /// # Errors
    ///
    /// A bad frame.
    pub fn decode_one(&mut self) -> Result<Option<Frame>, String> {
        self.decoder
            .decode(&mut self.buf)
            .map_err(|e| format!("bad frame: {e}"))
    }

    /// Decodes every complete frame read so far and hands them to `handler`; returns
    /// how many. Frames decoded before a bad one are still handed over.
    ///
    /// # Errors
    ///
    /// A bad frame, or the handler's error.
    pub fn process(&mut self, handler: &dyn FrameHandler) -> Result<usize, String> {
        let bad = loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(f)) => self.frames.push(f),
                Ok(None) => break None,
                Err(e) => break Some(format!("bad frame: {e}")),
            }
        };
        let n = self.frames.len();
        if n > 0 {
            handler.frames(&mut self.frames)?;
            self.frames.clear();
        }
        bad.map_or(Ok(n), Err)
    }
}

/// The background reader's loop: holds the read role unless a receiver wants it, reads
/// and hands frames over until `stop` holds or the connection ends. Returns why it
/// ended: `None` for `stop` or a clean close by the peer.
pub fn background(
    stream: &Stream,
    role: &ReadRole,
    side: &Mutex<ReadBuffer>,
    handler: &dyn FrameHandler,
    stop: &dyn Fn() -> bool,
) -> Option<String> {
    let mut fds = [pollfd(stream.socket().as_fd()), pollfd(role.wake_fd())];
    let mut nap: Duration = LINGER;
    loop {
        if stop() {
            return None;
        }
        if !role.background_may_read(&mut nap) {
            continue;
        }
        let mut rs = side.lock();
        if !role.start_polling(0) {
            continue;
        }
        let ready = stream.before_wait(&|| role.others_want(0));
        let waited = if ready {
            fds.iter_mut().for_each(PollFd::clear_revents);
            Ok(true)
        } else {
            let waited = wait_readable(&mut fds, None);
            stream.after_wait();
            waited
        };
        role.stop_polling();
        if let Err(e) = waited {
            return Some(e.to_string());
        }
        if fired(&fds[1]) {
            role.drain_wakes();
        }
        if ready || fired(&fds[0]) {
            if let Err(reason) = rs.read_from(stream, false) {
                return reason;
            }
            if let Err(e) = rs.process(handler) {
                return Some(e);
            }
        }
    }
}

/// What [`pump`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Pumped {
    /// `ready` holds.
    Ready,
    /// The deadline passed first.
    Timeout,
    /// Another party reads the connection (or the connection is closed): wait for
    /// what it hands over instead.
    Unavailable,
    /// The connection ended while this thread read it: `None` when the peer closed it
    /// cleanly, or why it failed.
    Ended(Option<String>),
}

/// How a thread about to block for its own message reads the connection itself.
pub struct Pump<'a> {
    /// The connection.
    pub stream: &'a Stream,
    /// Its read role.
    pub role: &'a ReadRole,
    /// What the holder of the role owns.
    pub side: &'a Mutex<ReadBuffer>,
    /// Where the frames go.
    pub handler: &'a dyn FrameHandler,
    /// Whether the connection is closed (stop at once).
    pub closed: &'a dyn Fn() -> bool,
    /// Another descriptor that wakes the pumping thread (emptied when it fires): for a
    /// message that may reach it by another way.
    pub also_wake: Option<&'a std::os::fd::OwnedFd>,
}

/// Reads the connection on the calling thread until `ready` holds or `deadline`
/// passes, stepping aside for another receiver that wants the read role (see
/// [`crate::role`]): no thread hand-off on the way to the message it waits for.
pub fn pump(p: &Pump<'_>, ready: &dyn Fn() -> bool, deadline: Option<Instant>) -> Pumped {
    p.role.want();
    let mut routed = 0;
    let result = loop {
        if ready() {
            break Pumped::Ready;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break Pumped::Timeout;
        }
        if (p.closed)() {
            break Pumped::Unavailable;
        }
        // Whoever holds the role steps aside when it is waiting in `poll`: ask it to.
        // Meanwhile look at our own queue now and then.
        p.role.poke_if_polling();
        if let Some(rs) = p.side.try_lock_for(Duration::from_micros(50)) {
            break pump_locked(p, rs, ready, deadline, &mut routed);
        }
    };
    p.role.release(routed);
    result
}

fn pump_locked(
    p: &Pump<'_>,
    mut rs: parking_lot::MutexGuard<'_, ReadBuffer>,
    ready: &dyn Fn() -> bool,
    deadline: Option<Instant>,
    routed: &mut usize,
) -> Pumped {
    let wake = p.also_wake.map(|fd| pollfd(fd.as_fd()));
    let mut fds = [pollfd(p.stream.socket().as_fd()), pollfd(p.role.wake_fd())];
    let mut with_wake;
    let fds: &mut [PollFd<'_>] = match wake {
        Some(w) => {
            with_wake = [fds[0].clone(), fds[1].clone(), w];
            &mut with_wake
        }
        None => &mut fds,
    };
    loop {
        match rs.process(p.handler) {
            Ok(n) => *routed += n,
            Err(reason) => return Pumped::Ended(Some(reason)),
        }
        if ready() {
            return Pumped::Ready;
        }
        if (p.closed)() {
            return Pumped::Unavailable;
        }
        if !p.role.start_polling(1) {
            // Someone else wants the role: let them have it, and wait for what whoever
            // reads hands over.
            return Pumped::Unavailable;
        }
        let ready = p.stream.before_wait(&|| p.role.others_want(1) || ready());
        let waited = if ready {
            fds.iter_mut().for_each(PollFd::clear_revents);
            Ok(true)
        } else {
            let waited = wait_readable(fds, deadline);
            p.stream.after_wait();
            waited
        };
        p.role.stop_polling();
        match waited {
            Ok(true) => {}
            Ok(false) => return Pumped::Timeout,
            Err(e) => return Pumped::Ended(Some(e.to_string())),
        }
        if fds.len() > 2 && fired(&fds[2]) {
            if let Some(fd) = p.also_wake {
                drain(fd);
            }
        }
        if fired(&fds[1]) {
            p.role.drain_wakes();
            if p.role.others_want(1) {
                return Pumped::Unavailable;
            }
        }
        if ready || fired(&fds[0]) {
            if let Err(reason) = rs.read_from(p.stream, false) {
                return Pumped::Ended(reason);
            }
        }
    }
}
