//! A resumable session: one local byte stream (a Unix socket pair whose other end the
//! hub or the client's connection engine holds) carried over a succession of TLS links.
//!
//! Each side counts the bytes it has sent and the bytes it has received (and written to
//! its local socket), keeps what it sent until the other side acknowledges it, and
//! heartbeats. When a link breaks or falls silent, the remote process connects again
//! with its certificate and names the session; each side says how much it received, and
//! each sends again exactly what the other lacks. So within the grace period nothing is
//! lost or delivered twice; once the grace period passes the session ends, its local
//! socket closes, and the process counts as gone.
//!
//! Records on a link, after the opening exchange (all integers little-endian):
//! `u8 type`, `u32 length`, payload: `DATA` (stream bytes, at most 64 KiB), `ACK`
//! (`u64` bytes received), `PING`, `PONG`, `CLOSE` (the stream ended for good).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;

/// Stream bytes.
pub const DATA: u8 = 0x10;
/// The bytes received so far.
pub const ACK: u8 = 0x11;
/// Are you there?
pub const PING: u8 = 0x12;
/// Here.
pub const PONG: u8 = 0x13;
/// The stream ended: do not reconnect.
pub const CLOSE: u8 = 0x14;
/// Largest record payload.
pub const MAX_RECORD: usize = 64 * 1024;
/// Bytes of a record's header: its type and its payload's length.
const HEADER: usize = 5;
/// The buffer the local socket is read into: each read becomes a DATA record cut from
/// it (header included), written to the link and kept until acknowledged, without a
/// copy. Small reads share one; a large read fills one. Below the allocator's mmap
/// threshold, so that a new one is heap memory again, without page faults.
const ARENA: usize = HEADER + MAX_RECORD;
/// A new buffer is taken when less than this is left for a read.
const MIN_READ: usize = 4 * 1024;
/// Acknowledge at least this often, in bytes received.
const ACK_EVERY: u64 = 256 * 1024;

/// How a session watches and keeps its links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// A link on which nothing arrives for this long is broken (pings go every quarter
    /// of it).
    pub heartbeat: Duration,
    /// How long a session outlives its last link, waiting for the process to connect
    /// again.
    pub grace: Duration,
    /// Most bytes sent and not yet acknowledged; beyond, the session stops reading its
    /// local socket until acknowledgements come.
    pub max_unacked: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            heartbeat: Duration::from_secs(3),
            grace: Duration::from_secs(30),
            max_unacked: 64 << 20,
        }
    }
}

/// How a link ended.
#[derive(Debug)]
pub enum LinkEnd<T = ()> {
    /// Broken or silent: another link may resume the session.
    Lost(String),
    /// The stream ended for good (either side closed it).
    Closed,
    /// The `stop` future given to [`Session::run_link`] completed, with this value; the
    /// session can go on over another link.
    Stopped(T),
}

/// What was sent and not yet acknowledged.
struct Retained {
    /// Bytes acknowledged by the other side.
    acked: u64,
    /// Bytes ever sent.
    sent: u64,
    chunks: VecDeque<Bytes>,
}

impl Retained {
    fn unacked(&self) -> usize {
        (self.sent - self.acked) as usize
    }

    /// The other side has everything up to `upto`.
    fn ack(&mut self, upto: u64) -> Result<(), String> {
        if upto < self.acked || upto > self.sent {
            return Err(format!(
                "an acknowledgement of {upto} bytes, outside {}..={}",
                self.acked, self.sent
            ));
        }
        let mut drop = upto - self.acked;
        while drop > 0 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            if (front.len() as u64) <= drop {
                drop -= front.len() as u64;
                self.chunks.pop_front();
            } else {
                front.advance(drop as usize);
                drop = 0;
            }
        }
        self.acked = upto;
        Ok(())
    }
}

/// One side's state of a session, across links.
pub struct Session {
    local: UnixStream,
    config: SessionConfig,
    retained: Retained,
    /// Bytes received and written to the local socket.
    received: u64,
    local_closed: bool,
}

fn record(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    out.push(kind);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
}

impl Session {
    /// A session carrying `local`.
    pub fn new(local: UnixStream, config: SessionConfig) -> Session {
        Session {
            local,
            config,
            retained: Retained {
                acked: 0,
                sent: 0,
                chunks: VecDeque::new(),
            },
            received: 0,
            local_closed: false,
        }
    }

    /// Bytes received so far: what this side says when a link opens.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The session's settings.
    pub fn config(&self) -> SessionConfig {
        self.config
    }

    /// Carries the stream over `link` until it breaks, the stream ends, or `stop`
    /// completes (a newer link replaces this one); the other side said it has received
    /// `peer_received` bytes.
    pub async fn run_link<S, F>(
        &mut self,
        link: S,
        peer_received: u64,
        stop: F,
    ) -> LinkEnd<F::Output>
    where
        S: AsyncRead + AsyncWrite + Unpin,
        F: std::future::Future,
    {
        tokio::pin!(stop);
        if let Err(e) = self.retained.ack(peer_received) {
            // The other side's count cannot be trusted: the session cannot go on.
            tracing::warn!("cannot resume the session: {e}");
            return LinkEnd::Closed;
        }
        let (mut rd, mut wr) = tokio::io::split(link);
        let mut out = Vec::with_capacity(MAX_RECORD + 64);
        // What the other side lacks, first.
        for chunk in &self.retained.chunks {
            for piece in chunk.chunks(MAX_RECORD) {
                record(&mut out, DATA, piece);
            }
        }
        if self.local_closed {
            record(&mut out, CLOSE, &[]);
        }
        if let Err(e) = write_out(&mut wr, &mut out, None).await {
            return LinkEnd::Lost(format!("cannot write: {e}"));
        }
        if self.local_closed {
            return LinkEnd::Closed;
        }
        let mut inbuf = BytesMut::with_capacity(2 * MAX_RECORD);
        // Local reads land after a DATA header whose length is filled in afterwards.
        let mut arena = BytesMut::new();
        let mut last_heard = Instant::now();
        let mut acked_sent = self.received;
        let mut tick = tokio::time::interval(self.config.heartbeat / 4);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let room = self.retained.unacked() < self.config.max_unacked;
            if arena.is_empty() {
                if arena.capacity() < HEADER + MIN_READ {
                    // The same buffer again if every record cut from it is gone, else
                    // a new one.
                    arena.reserve(ARENA);
                }
                arena.put_slice(&[DATA, 0, 0, 0, 0]);
            }
            let mut data = None;
            let room_in_arena = (arena.capacity() - HEADER).min(MAX_RECORD);
            let mut into = (&mut arena).limit(room_in_arena);
            tokio::select! {
                // Only between steps: a step that writes to the local socket is never
                // cut in the middle, so `received` always counts what was written.
                value = &mut stop => return LinkEnd::Stopped(value),
                n = self.local.read_buf(&mut into), if room => {
                    match n {
                        Ok(0) | Err(_) => {
                            self.local_closed = true;
                            record(&mut out, CLOSE, &[]);
                            let _ = write_out(&mut wr, &mut out, None).await;
                            return LinkEnd::Closed;
                        }
                        Ok(n) => {
                            arena[1..HEADER].copy_from_slice(&(n as u32).to_le_bytes());
                            let rec = arena.split().freeze();
                            self.retained.sent += n as u64;
                            self.retained.chunks.push_back(rec.slice(HEADER..));
                            data = Some(rec);
                        }
                    }
                }
                n = rd.read_buf(&mut inbuf) => {
                    match n {
                        Ok(0) => return LinkEnd::Lost("the link closed".into()),
                        Err(e) => return LinkEnd::Lost(format!("cannot read: {e}")),
                        Ok(_) => {}
                    }
                    last_heard = Instant::now();
                    match self.take_records(&mut inbuf, &mut out).await {
                        Ok(true) => {}
                        Ok(false) => {
                            let _ = write_out(&mut wr, &mut out, None).await;
                            return LinkEnd::Closed;
                        }
                        Err(e) => return LinkEnd::Lost(e),
                    }
                    if self.received - acked_sent >= ACK_EVERY {
                        record(&mut out, ACK, &self.received.to_le_bytes());
                        acked_sent = self.received;
                    }
                }
                _ = tick.tick() => {
                    if last_heard.elapsed() > self.config.heartbeat {
                        return LinkEnd::Lost(format!(
                            "nothing heard for {} ms",
                            self.config.heartbeat.as_millis()
                        ));
                    }
                    record(&mut out, PING, &[]);
                    if self.received != acked_sent {
                        record(&mut out, ACK, &self.received.to_le_bytes());
                        acked_sent = self.received;
                    }
                }
            }
            if let Err(e) = write_out(&mut wr, &mut out, data).await {
                return LinkEnd::Lost(format!("cannot write: {e}"));
            }
        }
    }

    /// Handles the whole records in `inbuf`; `Ok(false)` when the other side closed
    /// the stream.
    async fn take_records(
        &mut self,
        inbuf: &mut BytesMut,
        out: &mut Vec<u8>,
    ) -> Result<bool, String> {
        loop {
            if inbuf.len() < 5 {
                return Ok(true);
            }
            let kind = inbuf[0];
            let len = u32::from_le_bytes([inbuf[1], inbuf[2], inbuf[3], inbuf[4]]) as usize;
            if len > MAX_RECORD {
                return Err(format!("a record of {len} bytes exceeds {MAX_RECORD}"));
            }
            if inbuf.len() < 5 + len {
                inbuf.reserve(5 + len - inbuf.len());
                return Ok(true);
            }
            inbuf.advance(5);
            let payload = inbuf.split_to(len);
            match kind {
                DATA => {
                    if self.local.write_all(&payload).await.is_err() {
                        // The local side is gone: the stream ends.
                        self.local_closed = true;
                        record(out, CLOSE, &[]);
                        return Ok(false);
                    }
                    self.received += len as u64;
                }
                ACK if len == 8 => {
                    let upto = u64::from_le_bytes(payload[..8].try_into().unwrap_or([0; 8]));
                    self.retained.ack(upto)?;
                }
                PING if len == 0 => record(out, PONG, &[]),
                PONG if len == 0 => {}
                CLOSE if len == 0 => {
                    let _ = self.local.shutdown().await;
                    self.local_closed = true;
                    return Ok(false);
                }
                other => return Err(format!("an unknown record {other:#x} of {len} bytes")),
            }
        }
    }
}

/// Writes the records in `out`, then the DATA record `data` (header included), and
/// flushes.
async fn write_out<W: AsyncWrite + Unpin>(
    wr: &mut W,
    out: &mut Vec<u8>,
    data: Option<Bytes>,
) -> std::io::Result<()> {
    if out.is_empty() && data.is_none() {
        return Ok(());
    }
    let r = async {
        if !out.is_empty() {
            wr.write_all(out).await?;
        }
        if let Some(data) = &data {
            wr.write_all(data).await?;
        }
        wr.flush().await
    }
    .await;
    out.clear();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledgements_trim_what_is_kept() {
        let mut r = Retained {
            acked: 0,
            sent: 10,
            chunks: VecDeque::from([Bytes::from_static(b"hello"), Bytes::from_static(b"world")]),
        };
        r.ack(3).unwrap();
        assert_eq!(r.chunks[0], Bytes::from_static(b"lo"));
        r.ack(7).unwrap();
        assert_eq!(r.chunks.len(), 1);
        assert_eq!(r.chunks[0], Bytes::from_static(b"rld"));
        assert!(r.ack(2).is_err(), "backwards");
        assert!(r.ack(11).is_err(), "beyond what was sent");
        r.ack(10).unwrap();
        assert!(r.chunks.is_empty());
    }
}
