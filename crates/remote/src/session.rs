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

use bytes::{Buf, Bytes, BytesMut};
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
/// Acknowledge at least this often, in bytes received.
const ACK_EVERY: u64 = 256 * 1024;
/// Bytes waiting for the link beyond which the local socket is not read.
const OUT_BACKLOG: usize = 1 << 20;

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
            max_unacked: 16 << 20,
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
        let heartbeat = self.config.heartbeat;
        // What goes to the link, from `written` on. The link is written as one step of
        // the loop among the others, so that reading never waits for writing: two
        // sides that both send more than the network holds still read each other.
        let mut out = Vec::with_capacity(MAX_RECORD + 64);
        let mut written = 0;
        let mut unflushed = false;
        // What the other side lacks, first.
        for chunk in &self.retained.chunks {
            for piece in chunk.chunks(MAX_RECORD) {
                record(&mut out, DATA, piece);
            }
        }
        if self.local_closed {
            record(&mut out, CLOSE, &[]);
        }
        let mut inbuf = BytesMut::with_capacity(2 * MAX_RECORD);
        let mut local_buf = vec![0u8; MAX_RECORD];
        let mut last_heard = Instant::now();
        let mut writing_since = Instant::now();
        let mut acked_sent = self.received;
        let mut tick = tokio::time::interval(heartbeat / 4);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let writing = written < out.len() || unflushed;
            if !writing {
                if self.local_closed {
                    // Everything, the CLOSE included, is out.
                    return LinkEnd::Closed;
                }
                writing_since = Instant::now();
            }
            let room = !self.local_closed
                && self.retained.unacked() < self.config.max_unacked
                && out.len() - written < OUT_BACKLOG;
            tokio::select! {
                // Only between steps: a step that writes to the local socket is never
                // cut in the middle, so `received` always counts what was written.
                value = &mut stop => return LinkEnd::Stopped(value),
                step = async {
                    if written < out.len() {
                        wr.write(&out[written..]).await.map(Some)
                    } else {
                        wr.flush().await.map(|()| None)
                    }
                }, if writing => {
                    match step {
                        Ok(Some(0)) => return LinkEnd::Lost("the link closed".into()),
                        Ok(Some(n)) => {
                            written += n;
                            unflushed = true;
                            writing_since = Instant::now();
                            if written == out.len() {
                                out.clear();
                                written = 0;
                            }
                        }
                        Ok(None) => unflushed = false,
                        Err(e) => return LinkEnd::Lost(format!("cannot write: {e}")),
                    }
                }
                n = self.local.read(&mut local_buf), if room => {
                    match n {
                        Ok(0) | Err(_) => {
                            // Said once everything before it is out.
                            self.local_closed = true;
                            record(&mut out, CLOSE, &[]);
                        }
                        Ok(n) => {
                            let chunk = Bytes::copy_from_slice(&local_buf[..n]);
                            record(&mut out, DATA, &chunk);
                            self.retained.sent += n as u64;
                            self.retained.chunks.push_back(chunk);
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
                            // The other side ended the stream: what is left (our CLOSE,
                            // if the local side is gone too) goes out if it can.
                            let _ = write_out(&mut wr, &out[written..], heartbeat).await;
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
                    if last_heard.elapsed() > heartbeat {
                        return LinkEnd::Lost(format!(
                            "nothing heard for {} ms",
                            heartbeat.as_millis()
                        ));
                    }
                    if writing && writing_since.elapsed() > heartbeat {
                        // A network that dropped everything: the send buffer is full
                        // and nothing drains it.
                        return LinkEnd::Lost(format!(
                            "the link took nothing for {} ms",
                            heartbeat.as_millis()
                        ));
                    }
                    record(&mut out, PING, &[]);
                    if self.received != acked_sent {
                        record(&mut out, ACK, &self.received.to_le_bytes());
                        acked_sent = self.received;
                    }
                }
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

/// Writes `out` and flushes, within `limit`: the last words on a link that is ending.
async fn write_out<W: AsyncWrite + Unpin>(
    wr: &mut W,
    out: &[u8],
    limit: Duration,
) -> std::io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    tokio::time::timeout(limit, async {
        wr.write_all(out).await?;
        wr.flush().await
    })
    .await
    .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn two_sides_sending_more_than_the_link_holds_still_read_each_other() {
        const N: usize = 4 << 20;
        let config = SessionConfig {
            heartbeat: Duration::from_secs(2),
            ..SessionConfig::default()
        };
        let (a_local, a_app) = UnixStream::pair().unwrap();
        let (b_local, b_app) = UnixStream::pair().unwrap();
        let (mut a, mut b) = (Session::new(a_local, config), Session::new(b_local, config));
        // A link that holds little: both sides' writes stall unless each reads too.
        let (la, lb) = tokio::io::duplex(4096);
        let links = tokio::spawn(async move {
            tokio::join!(
                a.run_link(la, 0, std::future::pending::<()>()),
                b.run_link(lb, 0, std::future::pending::<()>())
            )
        });
        // Each application sends N bytes and takes N bytes, at once (and keeps its end
        // open: a local end that closes ends the stream both ways).
        let app = |s: UnixStream| async move {
            let (mut r, mut w) = s.into_split();
            let writer = tokio::spawn(async move {
                w.write_all(&vec![1u8; N]).await.unwrap();
                w
            });
            let (mut got, mut buf) = (0, vec![0u8; 1 << 16]);
            while got < N {
                let n = r.read(&mut buf).await.unwrap();
                assert!(n > 0, "the stream ended after {got} bytes");
                got += n;
            }
            writer.await.unwrap()
        };
        let both = async { tokio::join!(app(a_app), app(b_app)) };
        tokio::time::timeout(Duration::from_secs(30), both)
            .await
            .expect("both sides got everything");
        links.abort();
    }

    #[tokio::test]
    async fn a_link_that_takes_nothing_is_lost_within_the_heartbeat() {
        let (local, mut feeder) = UnixStream::pair().unwrap();
        let config = SessionConfig {
            heartbeat: Duration::from_millis(200),
            grace: Duration::from_secs(1),
            max_unacked: 1 << 20,
        };
        let mut session = Session::new(local, config);
        // The other end of the link never reads and never writes: a network that
        // dropped everything, with a send buffer that fills.
        let (link, _peer) = tokio::io::duplex(1024);
        tokio::spawn(async move { while feeder.write_all(&[7u8; 4096]).await.is_ok() {} });
        let end = tokio::time::timeout(
            Duration::from_secs(3),
            session.run_link(link, 0, std::future::pending::<()>()),
        )
        .await
        .expect("a stalled write must not hold the session");
        assert!(matches!(end, LinkEnd::Lost(_)), "{end:?}");
    }

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
