//! Finding the main process to ask, and the observer's connection to its hub.

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use yukicomm_hub::discovery::{self, Entry};
use yukicomm_wire::{
    encode_control, Decoder, Event, Frame, Reply, Request, DEFAULT_MAX_FRAME, PROTOCOL_VERSION,
};

/// How long a request may take to be answered.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the command could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No main process of this user advertises itself.
    #[error("no running yukicomm program found for this user (looked in {})", .0.display())]
    NoneFound(PathBuf),
    /// None with that pid.
    #[error("no running yukicomm program with pid {pid} for this user (looked in {})", dir.display())]
    NoSuchPid {
        /// The pid asked for.
        pid: u32,
        /// Where the programs advertise themselves.
        dir: PathBuf,
    },
    /// Several run; the user must choose.
    #[error("several yukicomm programs are running; choose one with --pid:\n{0}")]
    Several(String),
    /// The discovery directory could not be read.
    #[error("cannot read {}", .0.display())]
    Discovery(PathBuf, #[source] std::io::Error),
    /// The program belongs to another user.
    #[error("permission refused: {what} belongs to user {owner}, and only that user may ask it (you are user {me})")]
    OtherUser {
        /// The socket or process.
        what: String,
        /// Its owner.
        owner: u32,
        /// The caller's uid.
        me: u32,
    },
    /// The program's socket cannot be reached by this user.
    #[error("permission refused: {what} cannot be reached by user {me}; only the user it runs as may ask it")]
    Unreachable {
        /// The socket.
        what: String,
        /// The caller's uid.
        me: u32,
    },
    /// The main process closed the connection without an answer.
    #[error("the main process at {} refused the connection (it answers only its own user; you are user {me})", socket.display())]
    Refused {
        /// Its socket.
        socket: PathBuf,
        /// The caller's uid.
        me: u32,
    },
    /// The connection could not be made.
    #[error("cannot connect to {}", .0.display())]
    Connect(PathBuf, #[source] std::io::Error),
    /// The connection failed.
    #[error("the connection to the main process failed")]
    Io(#[from] std::io::Error),
    /// The main process sent something this command cannot read.
    #[error("the main process sent a bad frame: {0}")]
    Protocol(String),
    /// The main process answered with an error.
    #[error("the main process refused: {0}")]
    Answer(String),
    /// No answer in time.
    #[error("the main process did not answer within {0:?}")]
    Timeout(Duration),
    /// The terminal could not be used.
    #[error("the terminal failed")]
    Terminal(#[source] std::io::Error),
    /// The output could not be written as JSON.
    #[error("cannot write JSON")]
    Json(#[from] serde_json::Error),
}

impl Error {
    /// Whether this is a closed pipe on the output (`yukicomm status | head`): success.
    pub fn is_broken_pipe(&self) -> bool {
        match self {
            Error::Io(e) => e.kind() == std::io::ErrorKind::BrokenPipe,
            Error::Json(e) => e.io_error_kind() == Some(std::io::ErrorKind::BrokenPipe),
            _ => false,
        }
    }
}

fn my_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// The socket of the main process selected by `pid` or `socket`, or the only one.
pub fn select(pid: Option<u32>, socket: Option<&Path>) -> Result<PathBuf, Error> {
    if let Some(s) = socket {
        return Ok(s.to_path_buf());
    }
    let dir = discovery::dir();
    let entries = discovery::entries().map_err(|e| Error::Discovery(dir.clone(), e))?;
    if let Some(pid) = pid {
        return match entries.into_iter().find(|e| e.pid == pid) {
            Some(e) => Ok(e.socket),
            None => {
                // A process of another user advertises elsewhere: say so if it is one.
                if let Ok(m) = std::fs::metadata(format!("/proc/{pid}")) {
                    if m.uid() != my_uid() {
                        return Err(Error::OtherUser {
                            what: format!("process {pid}"),
                            owner: m.uid(),
                            me: my_uid(),
                        });
                    }
                }
                Err(Error::NoSuchPid { pid, dir })
            }
        };
    }
    match entries.len() {
        0 => Err(Error::NoneFound(dir)),
        1 => Ok(entries.into_iter().next().expect("one entry").socket),
        _ => Err(Error::Several(list(&entries))),
    }
}

/// The programs, one a line.
pub fn list(entries: &[Entry]) -> String {
    entries
        .iter()
        .map(|e| {
            format!(
                "  pid {:<8} {:<20} {}",
                e.pid,
                e.program,
                e.socket.display()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// An observer's connection to a hub.
pub struct Observer {
    stream: UnixStream,
    socket: PathBuf,
    input: BytesMut,
    decoder: Decoder,
    next_id: u32,
    /// Events that arrived while waiting for a reply.
    events: std::collections::VecDeque<Event>,
}

impl Observer {
    /// Connects to the hub at `socket` and says `observe`.
    pub fn connect(socket: &Path) -> Result<Observer, Error> {
        let stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => Error::Unreachable {
                what: format!("the program at {}", socket.display()),
                me: my_uid(),
            },
            _ => Error::Connect(socket.to_path_buf(), e),
        })?;
        let mut o = Observer {
            stream,
            socket: socket.to_path_buf(),
            input: BytesMut::with_capacity(64 << 10),
            decoder: Decoder::new(DEFAULT_MAX_FRAME),
            next_id: 0,
            events: Default::default(),
        };
        match o.request(Request::Observe {
            version: PROTOCOL_VERSION,
        }) {
            Ok(Reply::Observing { .. }) => Ok(o),
            Ok(other) => Err(Error::Protocol(format!("unexpected answer {other:?}"))),
            Err(Error::Io(e)) if closed(&e) => Err(Error::Refused {
                socket: socket.to_path_buf(),
                me: my_uid(),
            }),
            Err(e) => Err(e),
        }
    }

    /// Sends `request` and waits for its reply (an error reply is an [`Error::Answer`]).
    pub fn request(&mut self, request: Request) -> Result<Reply, Error> {
        let id = self.next_id;
        self.next_id += 1;
        let mut out = Vec::new();
        encode_control(&mut out, &Frame::Request { id, body: request });
        self.stream.write_all(&out)?;
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            match self.next_frame(deadline)? {
                Some(Frame::Reply { id: got, body }) if got == id => {
                    return match body {
                        Reply::Error { message, .. } => Err(Error::Answer(message)),
                        other => Ok(other),
                    }
                }
                Some(Frame::Event(e)) => self.events.push_back(e),
                Some(_) => {}
                None => return Err(Error::Timeout(REPLY_TIMEOUT)),
            }
        }
    }

    /// The report.
    pub fn stats(&mut self) -> Result<yukicomm_wire::stats::Stats, Error> {
        match self.request(Request::Stats)? {
            Reply::Stats { stats } => Ok(*stats),
            other => Err(Error::Protocol(format!("unexpected answer {other:?}"))),
        }
    }

    /// The next event, waiting until `deadline`; `None` if none came.
    pub fn next_event(&mut self, deadline: Instant) -> Result<Option<Event>, Error> {
        if let Some(e) = self.events.pop_front() {
            return Ok(Some(e));
        }
        loop {
            match self.next_frame(deadline)? {
                Some(Frame::Event(e)) => return Ok(Some(e)),
                Some(_) => {}
                None => return Ok(None),
            }
        }
    }

    /// The next frame, or `None` at the deadline.
    fn next_frame(&mut self, deadline: Instant) -> Result<Option<Frame>, Error> {
        loop {
            match self.decoder.decode(&mut self.input) {
                Ok(Some(f)) => return Ok(Some(f)),
                Ok(None) => {}
                Err(e) => return Err(Error::Protocol(e.to_string())),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.stream.set_read_timeout(Some(left))?;
            let mut buf = [0u8; 64 << 10];
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    return Err(Error::Io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!(
                            "the main process at {} closed the connection",
                            self.socket.display()
                        ),
                    )))
                }
                Ok(n) => self.input.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::Io(e)),
            }
        }
    }
}

/// Whether an error means the peer closed the connection.
fn closed(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe
    )
}
