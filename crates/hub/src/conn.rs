//! One child connection: its reader task, its outbox and its flusher task.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::UnixStream;
use tokio::sync::Notify;
use yukicomm_wire::{
    encode_control, encode_credit, encode_msg_raw, Decoder, Frame, Outbox, OutboxSink, Request,
};

use crate::router::ConnId;
use crate::Inner;

/// How long a new connection may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames pushed closer together than this are coalesced into one write.
const BURST_WINDOW: Duration = Duration::from_micros(3);
/// Bytes read from the socket at a time.
const READ_SIZE: usize = 64 * 1024;

/// The write side of a connection, shared by every thread that routes to it.
pub(crate) struct Conn {
    pub(crate) id: ConnId,
    stream: Arc<UnixStream>,
    outbox: Outbox,
    flush: Notify,
    closed: AtomicBool,
    close: Notify,
}

impl OutboxSink for Conn {
    fn write(&self, buf: &[u8]) -> std::io::Result<usize> {
        self.stream.try_write(buf)
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
        }
    }

    /// Writes what was appended, or leaves it to the flusher.
    pub(crate) fn kick(&self) {
        if self.outbox.kick(self).is_err() {
            self.shut();
        }
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
                if let Err(e) = conn.stream.writable().await {
                    failure = Some(e.kind());
                    break;
                }
                match conn.stream.try_write(&data[written..]) {
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

/// Reads one frame, reading more from the socket as needed; `Ok(None)` on a clean close.
async fn read_frame(
    stream: &UnixStream,
    buf: &mut BytesMut,
    decoder: &Decoder,
) -> Result<Option<Frame>, String> {
    loop {
        if let Some(f) = decoder.decode(buf).map_err(|e| e.to_string())? {
            return Ok(Some(f));
        }
        if !fill(stream, buf).await? {
            return Ok(None);
        }
    }
}

/// Reads more bytes; `Ok(false)` at end of stream.
async fn fill(stream: &UnixStream, buf: &mut BytesMut) -> Result<bool, String> {
    buf.reserve(READ_SIZE);
    loop {
        stream.readable().await.map_err(|e| e.to_string())?;
        match stream.try_read_buf(buf) {
            Ok(0) => {
                return if buf.is_empty() {
                    Ok(false)
                } else {
                    Err("connection closed mid-frame".into())
                };
            }
            Ok(_) => return Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            // A peer that dies with unread data resets the connection: a close.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && buf.is_empty() => {
                return Ok(false)
            }
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
    let stream = Arc::new(stream);
    let id = inner.next_conn_id();
    let conn = Arc::new(Conn {
        id,
        stream: stream.clone(),
        outbox: Outbox::new(BURST_WINDOW),
        flush: Notify::new(),
        closed: AtomicBool::new(false),
        close: Notify::new(),
    });
    tokio::spawn(flusher(conn.clone()));
    let decoder = Decoder::new(inner.max_frame);
    let mut buf = BytesMut::with_capacity(READ_SIZE);

    let first = tokio::time::timeout(HELLO_TIMEOUT, read_frame(&stream, &mut buf, &decoder)).await;
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
    tracing::debug!(child = %name, conn = id.0, "child connected");

    let reason = loop {
        let mut frames = Vec::new();
        let bad = loop {
            match decoder.decode(&mut buf) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break None,
                Err(e) => break Some(e.to_string()),
            }
        };
        if !frames.is_empty() {
            if let Err(e) = inner.frames(id, frames) {
                break Some(e);
            }
        }
        if let Some(e) = bad {
            break Some(e);
        }
        tokio::select! {
            r = fill(&stream, &mut buf) => match r {
                Ok(true) => {}
                Ok(false) => break None,
                Err(e) => break Some(e),
            },
            _ = conn.close.notified() => break None,
        }
    };
    match &reason {
        Some(e) => tracing::warn!(child = %name, "closed the connection: {e}"),
        None => tracing::debug!(child = %name, "connection closed"),
    }
    conn.shut();
    inner.disconnected(id);
}
