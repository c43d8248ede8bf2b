//! Publish/subscribe: the publisher (in the `client` child) and the subscribers (the
//! `subNN` children), for yukicomm and for Redis; a subscriber checks that every
//! message arrives intact and at most once.

use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt, TryStreamExt};
use yukicomm::store::SubscriberError;
use yukicomm::{Channel, Payload, Store};

use crate::data::{now_ns, payload, value, PAYLOAD, VALUE};
use crate::msg::{send, Msg};
use crate::plan::{STEP_TIMEOUT, TAIL_IDLE};
use crate::redis_server::{redis_connect, redis_connect_async, rerr};
use crate::support::other;
use crate::Result;

/// The publisher's pauses when a subscription had no room: 200 µs, doubling while it
/// keeps happening, at most 3.2 ms, back to 200 µs after `4 * window` messages without.
struct Pauses {
    next: Duration,
    last_at: u64,
    count: u64,
}

impl Pauses {
    const FIRST: Duration = Duration::from_micros(200);

    fn new() -> Pauses {
        Pauses {
            next: Self::FIRST,
            last_at: 0,
            count: 0,
        }
    }

    /// Before publishing message `seq`: pauses if `short` (only this thread sleeps:
    /// replies are read by the connection's reader).
    fn at(&mut self, seq: u64, short: bool, window: usize) {
        if short {
            std::thread::sleep(self.next);
            self.count += 1;
            self.next = (self.next * 2).min(Self::FIRST * 16);
            self.last_at = seq;
        } else if seq - self.last_at > 4 * window as u64 {
            self.next = Self::FIRST;
        }
    }
}

/// Batches of `window` messages with `publish_many_async`, one batch at a time (as
/// Redis's pipelines). A reply counting fewer than `subscribers` deliveries per message
/// means a subscription had no room: the publisher then pauses as `yuki_publish` does.
pub async fn yuki_publish_batches(
    store: &Store,
    topic: &str,
    count: u64,
    window: usize,
    subscribers: usize,
) -> Result<Msg> {
    let (mut reached, mut pauses) = (0u64, Pauses::new());
    let first_ns = now_ns();
    let mut seq = 0;
    while seq < count {
        let end = (seq + window as u64).min(count);
        let r = store
            .publish_many_async(topic, (seq..end).map(payload))
            .await? as u64;
        reached += r;
        let short = r < (end - seq) * subscribers as u64;
        seq = end;
        pauses.at(seq, short, window);
    }
    Ok(Msg::PubDone {
        first_ns,
        end_ns: now_ns(),
        reached,
        pauses: pauses.count,
    })
}

/// `window` `publish_async` in flight. A reply counting fewer than `subscribers`
/// subscriptions means one had no room and missed the message: the publisher then lets
/// its requests in flight finish and pauses (200 µs, doubling while it keeps
/// happening, at most 3.2 ms) so that the subscribers catch up.
pub async fn yuki_publish(
    store: &Store,
    topic: &str,
    count: u64,
    window: usize,
    subscribers: usize,
) -> Result<Msg> {
    let mut inflight = FuturesUnordered::new();
    let (mut reached, mut pauses, mut short) = (0u64, Pauses::new(), false);
    let first_ns = now_ns();
    for seq in 0..count {
        if inflight.len() >= window {
            if let Some(r) = inflight.next().await {
                let r = r?;
                reached += r as u64;
                short |= r < subscribers;
            }
        }
        if short {
            while let Some(r) = inflight.next().await {
                reached += r? as u64;
            }
        }
        pauses.at(seq, std::mem::take(&mut short), window);
        let msg = payload(seq);
        inflight.push(async move { store.publish_async(topic, &msg).await });
    }
    while let Some(r) = inflight.next().await {
        reached += r? as u64;
    }
    Ok(Msg::PubDone {
        first_ns,
        end_ns: now_ns(),
        reached,
        pauses: pauses.count,
    })
}

/// Pipelines of `window` PUBLISH on one blocking connection.
pub fn redis_publish(socket: &str, topic: &str, count: u64, window: usize) -> Result<Msg> {
    let mut con = redis_connect(socket)?;
    let mut reached = 0u64;
    let first_ns = now_ns();
    let mut seq = 0;
    while seq < count {
        let end = (seq + window as u64).min(count);
        let mut p = redis::pipe();
        for s in seq..end {
            p.cmd("PUBLISH").arg(topic).arg(&value(s)[..]);
        }
        let replies: Vec<i64> = p.query(&mut con).map_err(rerr("PUBLISH"))?;
        reached += replies.iter().sum::<i64>() as u64;
        seq = end;
    }
    Ok(Msg::PubDone {
        first_ns,
        end_ns: now_ns(),
        reached,
        pauses: 0,
    })
}

/// `window` concurrent PUBLISH on one multiplexed connection.
pub async fn redis_publish_async(
    socket: &str,
    topic: &str,
    count: u64,
    window: usize,
) -> Result<Msg> {
    let con = redis_connect_async(socket).await?;
    let first_ns = now_ns();
    let reached = futures::stream::iter(0..count)
        .map(|seq| {
            let mut con = con.clone();
            async move {
                redis::cmd("PUBLISH")
                    .arg(topic)
                    .arg(&value(seq)[..])
                    .query_async::<i64>(&mut con)
                    .await
                    .map_err(rerr("PUBLISH"))
            }
        })
        .buffer_unordered(window)
        .try_fold(0u64, |acc, n| async move { Ok(acc + n as u64) })
        .await?;
    Ok(Msg::PubDone {
        first_ns,
        end_ns: now_ns(),
        reached,
        pauses: 0,
    })
}

/// A subscriber's count: every message must arrive intact, and at most once. (Order is
/// not checked: a publisher with many requests in flight need not send in order.)
struct Tally {
    count: u64,
    received: u64,
    missed: u64,
    /// One bit per message number: which arrived.
    seen: Vec<u64>,
    last_ns: u64,
}

impl Tally {
    fn new(count: u64) -> Tally {
        Tally {
            count,
            received: 0,
            missed: 0,
            seen: vec![0; count.div_ceil(64) as usize],
            last_ns: 0,
        }
    }

    fn message(&mut self, body: &[u8], len: usize) -> Result<()> {
        self.last_ns = now_ns();
        let seq = body
            .get(..8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
            .unwrap_or(u64::MAX);
        if seq >= self.count || body != &value(seq)[..len] {
            return Err(other(format!(
                "subscriber: message {seq} of {} bytes is not one that was published",
                body.len(),
            )));
        }
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if self.seen[word] & bit != 0 {
            return Err(other(format!("subscriber: message {seq} arrived twice")));
        }
        self.seen[word] |= bit;
        self.received += 1;
        Ok(())
    }

    fn done(&self) -> Msg {
        Msg::SubDone {
            received: self.received,
            missed: self.missed,
            last_ns: self.last_ns,
        }
    }
}

/// A yukicomm subscriber: subscribes, says `Subscribed`, then counts messages until
/// `count` arrived or were reported missed, or none came for a while.
pub fn yuki_subscribe(ch: &Channel<Msg>, store: &Store, topic: &str, count: u64) -> Result<Msg> {
    let sub = store.subscriber::<Payload>(topic)?;
    send(ch, Msg::Subscribed)?;
    let mut t = Tally::new(count);
    let mut wait = STEP_TIMEOUT;
    while t.received + t.missed < count {
        match sub.recv_timeout(wait) {
            Ok(p) => {
                t.message(&p.value, PAYLOAD)?;
                wait = TAIL_IDLE;
            }
            Err(SubscriberError::Missed { count, .. }) => t.missed += count,
            Err(SubscriberError::Timeout { .. }) => break,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(t.done())
}

/// A Redis subscriber: subscribes, says `Subscribed`, then counts messages until
/// `count` arrived or none came for a while.
pub fn redis_subscribe(ch: &Channel<Msg>, socket: &str, topic: &str, count: u64) -> Result<Msg> {
    let mut con = redis_connect(socket)?;
    let mut ps = con.as_pubsub();
    ps.subscribe(topic).map_err(rerr("SUBSCRIBE"))?;
    send(ch, Msg::Subscribed)?;
    let mut t = Tally::new(count);
    while t.received < count {
        match ps.get_message() {
            Ok(m) => {
                t.message(m.get_payload_bytes(), VALUE)?;
                if t.received == 1 {
                    ps.set_read_timeout(Some(TAIL_IDLE))
                        .map_err(rerr("set_read_timeout"))?;
                }
            }
            Err(e) if e.is_timeout() => break,
            Err(e) => return Err(rerr("subscriber")(e)),
        }
    }
    // Unsubscribing waits for Redis's answer; the connection just closes instead.
    std::mem::forget(ps);
    drop(con);
    Ok(t.done())
}
