//! The main process: waits for the children, sets the keys, then runs every selected
//! measurement round by round, yukicomm and Redis in alternating order, checks what the
//! children report, and measures memory last; the result is a [`Report`].

use std::time::Duration;

use yukicomm::{Channel, MainContext, Payload};

use crate::child::{sub_name, CLIENT};
use crate::data::{check_value, key, payload, rss, PAYLOAD, VALUE};
use crate::msg::{recv, send, unexpected, KvOp, Msg, Shape, Target};
use crate::plan::{
    Options, Plan, FAN_OUTS, MAX_SUBSCRIBERS, PUBLISH_WINDOW, STEP_TIMEOUT, WORK_TIMEOUT,
};
use crate::redis_server::{redis_connect, redis_used_memory, rerr, RedisInfo};
use crate::support::other;
use crate::support::report::{msgs, ops};
use crate::support::stats::per_second;
use crate::Result;

/// The rates of one measurement, one per round.
#[derive(Default)]
pub struct Rates {
    pub yuki: Vec<f64>,
    pub redis: Vec<f64>,
    /// For 50 clients one at a time: Redis with the 50 tasks sharing one multiplexed
    /// connection, as yukicomm's share one hub connection.
    pub redis_shared: Vec<f64>,
}

/// A set/get measurement: one shape, one operation.
pub struct KvRow {
    pub shape: Shape,
    pub op: KvOp,
    pub rates: Rates,
}

/// A publish/subscribe measurement: one fan-out.
pub struct PubsubRow {
    pub subscribers: usize,
    messages: u64,
    pub rates: Rates,
    /// Messages yukicomm dropped for subscribers without room, over all rounds.
    pub yuki_missed: u64,
    /// Times yukicomm's publisher paused for them, over all rounds.
    pub yuki_pauses: u64,
}

/// Memory per key: the growth of yukicomm's hub and, if it ran, of Redis.
pub struct Memory {
    pub keys: u64,
    pub yuki_rss: f64,
    pub redis: Option<RedisMemory>,
}

/// Redis's growth per key: its process's RSS and its own `used_memory`.
pub struct RedisMemory {
    pub rss: f64,
    pub used_memory: f64,
}

/// Everything measured in a run, and how.
pub struct Report {
    pub plan: Plan,
    pub options: Options,
    pub redis: std::result::Result<RedisInfo, String>,
    pub kv: Vec<KvRow>,
    pub pubsub: Vec<PubsubRow>,
    pub memory: Option<Memory>,
}

struct Main<'a> {
    ctx: &'a MainContext,
    plan: Plan,
    alt: bool,
    verbose: bool,
    /// Publish requests in flight.
    window: u32,
    client: Channel<Msg>,
    subs: Vec<Channel<Msg>>,
    redis: Option<RedisInfo>,
    topics: u64,
}

fn progress(what: &str) {
    eprintln!("store bench: {what}");
}

impl Main<'_> {
    /// Sends a command to the client and waits for its answer.
    fn ask_client(&self, m: Msg) -> Result<Msg> {
        send(&self.client, m)?;
        recv(&self.client, WORK_TIMEOUT)
    }

    fn targets(&self) -> Vec<Target> {
        let mut t = vec![Target::Yukicomm];
        if let Some(r) = &self.redis {
            t.push(Target::Redis(r.url(0)));
        }
        t
    }

    /// Yukicomm then Redis in even rounds, the other way round in odd ones.
    fn ordered(&self, round: u32) -> Vec<Target> {
        let mut t = self.targets();
        if round % 2 == 1 {
            t.reverse();
        }
        t
    }

    fn fill(&self, target: &Target, prefix: &str, count: u64, op: KvOp) -> Result<()> {
        match self.ask_client(Msg::Fill {
            target: target.clone(),
            prefix: prefix.into(),
            count,
            op,
        })? {
            Msg::FillDone => Ok(()),
            m => Err(unexpected(CLIENT, "FillDone", &m)),
        }
    }

    fn kv(&self, target: &Target, shape: Shape, op: KvOp, round: u32, alt: bool) -> Result<f64> {
        let count = self.plan.ops(shape);
        let m = self.ask_client(Msg::Kv {
            target: target.clone(),
            shape,
            op,
            start: round as u64 * count,
            count,
            keyspace: self.plan.keyspace,
            alt,
        })?;
        match m {
            Msg::KvDone { elapsed_ns } => {
                let rate = per_second(count, elapsed_ns);
                if self.verbose {
                    progress(&format!(
                        "  {}{} {} {}: {}",
                        target.name(),
                        if alt { " (alt)" } else { "" },
                        op.name(),
                        shape.name(),
                        ops(rate)
                    ));
                }
                Ok(rate)
            }
            m => Err(unexpected(CLIENT, "KvDone", &m)),
        }
    }

    /// One publish/subscribe measurement: delivered messages/s, the misses and the
    /// publisher's pauses.
    fn pubsub(&mut self, target: &Target, n: usize, count: u64) -> Result<(f64, u64, u64)> {
        self.topics += 1;
        let topic = format!("bench.{}", self.topics);
        let subs = &self.subs[..n];
        for s in subs {
            send(
                s,
                Msg::Subscribe {
                    target: target.clone(),
                    topic: topic.clone(),
                    count,
                },
            )?;
        }
        for s in subs {
            match recv(s, STEP_TIMEOUT)? {
                Msg::Subscribed => {}
                m => return Err(unexpected(&s.name(), "Subscribed", &m)),
            }
        }
        let (first_ns, end_ns, reached, pauses) = match self.ask_client(Msg::Publish {
            target: target.clone(),
            topic,
            count,
            window: self.window,
            subscribers: n as u32,
            alt: self.alt,
        })? {
            Msg::PubDone {
                first_ns,
                end_ns,
                reached,
                pauses,
            } => (first_ns, end_ns, reached, pauses),
            m => return Err(unexpected(CLIENT, "PubDone", &m)),
        };
        let (mut received, mut told, mut last) = (0u64, 0u64, first_ns);
        for s in subs {
            match recv(s, WORK_TIMEOUT)? {
                Msg::SubDone {
                    received: r,
                    missed,
                    last_ns,
                } => {
                    if r + missed > count {
                        return Err(other(format!(
                            "{}: {r} received and {missed} missed of {count} published",
                            s.name()
                        )));
                    }
                    received += r;
                    told += missed;
                    last = last.max(last_ns);
                }
                m => return Err(unexpected(&s.name(), "SubDone", &m)),
            }
        }
        let sent = n as u64 * count;
        // Every message the hub (or Redis) handed to a subscription must have arrived.
        if received != reached {
            return Err(other(format!(
                "{}: {n} subscriber(s): the publisher's replies count {reached} deliveries, \
                 the subscribers received {received} (of {sent})",
                target.name()
            )));
        }
        let missed = sent - received;
        if matches!(target, Target::Redis(_)) && missed > 0 {
            return Err(other(format!(
                "Redis: {n} subscriber(s) received {received} of {sent} messages"
            )));
        }
        if told > missed {
            return Err(other(format!(
                "yukicomm: subscribers were told of {told} misses, {missed} messages are missing"
            )));
        }
        if received == 0 {
            return Err(other(format!("{}: no message arrived", target.name())));
        }
        let rate = per_second(received, last.saturating_sub(first_ns));
        if self.verbose {
            progress(&format!(
                "  {} pub/sub to {n}: {} delivered, {missed} missed, {pauses} pauses; \
                 publisher {:.0} k publishes/s; last message {:.1} ms after the last reply",
                target.name(),
                msgs(rate),
                per_second(count, end_ns.saturating_sub(first_ns)) / 1e3,
                last.saturating_sub(end_ns) as f64 / 1e6,
            ));
        }
        Ok((rate, missed, pauses))
    }

    fn memory(&self) -> Result<Memory> {
        let keys = self.plan.memory_keys;
        progress(&format!("memory: yukicomm, {keys} keys"));
        let store = self.ctx.store();
        let len0 = store.len()?;
        settle();
        let before = rss(None)?;
        self.fill(&Target::Yukicomm, "mem:", keys, KvOp::Set)?;
        settle();
        let after = rss(None)?;
        let len1 = store.len()?;
        if len1 != len0 + keys as usize {
            return Err(other(format!(
                "yukicomm: {len1} keys after setting {keys} to a store of {len0}"
            )));
        }
        for n in [0, keys / 2, keys - 1] {
            let k = key("mem:", n);
            let v: Option<Payload> = store.get(&k)?;
            check_value(&k, n, v.as_deref(), PAYLOAD)?;
        }
        let yuki_rss = after.saturating_sub(before) as f64 / keys as f64;

        let redis = match &self.redis {
            None => None,
            Some(r) => {
                progress(&format!("memory: Redis, {keys} keys"));
                // Database 1, empty: Redis gets a dictionary of its own for these keys,
                // sized for them alone. (yukicomm's one table, holding the set/get keys
                // too, needs the same size for 1,000,000 keys as for 1,100,000.)
                let mut con = redis_connect(&r.url(1))?;
                let size = |con: &mut redis::Connection| -> Result<u64> {
                    redis::cmd("DBSIZE").query(con).map_err(rerr("DBSIZE"))
                };
                let len0 = size(&mut con)?;
                settle();
                let (before, used0) = (rss(Some(r.pid))?, redis_used_memory(&mut con)?);
                let target = Target::Redis(r.url(1));
                self.fill(&target, "mem:", keys, KvOp::Set)?;
                settle();
                let (after, used1) = (rss(Some(r.pid))?, redis_used_memory(&mut con)?);
                let len1 = size(&mut con)?;
                if len1 != len0 + keys {
                    return Err(other(format!(
                        "Redis: {len1} keys after setting {keys} to a database of {len0}"
                    )));
                }
                for n in [0, keys / 2, keys - 1] {
                    let k = key("mem:", n);
                    let v: Option<Vec<u8>> = redis::cmd("GET")
                        .arg(&k)
                        .query(&mut con)
                        .map_err(rerr("GET"))?;
                    check_value(&k, n, v.as_deref(), VALUE)?;
                }
                Some(RedisMemory {
                    rss: after.saturating_sub(before) as f64 / keys as f64,
                    used_memory: used1.saturating_sub(used0) as f64 / keys as f64,
                })
            }
        };
        Ok(Memory {
            keys,
            yuki_rss,
            redis,
        })
    }
}

/// Lets freed memory and late writes settle before reading a memory figure.
fn settle() {
    std::thread::sleep(Duration::from_millis(300));
}

/// The whole run, in the main process: waits for the children's `Ready`, sets the
/// keys, measures every selected rate in every round, then memory, and tells the
/// children to quit.
pub fn run_main(
    ctx: &MainContext,
    options: &Options,
    redis: std::result::Result<RedisInfo, String>,
) -> Result<Report> {
    let mut plan = Plan::new(options.quick);
    if let Some(n) = options.rounds {
        plan.rounds = n;
    }
    // A 62-byte payload must be stored as 64 bytes, like the Redis values.
    let encoded = rmp_serde::to_vec_named(&payload(0))
        .map_err(|e| other(format!("cannot encode a payload: {e}")))?;
    if encoded.len() != VALUE {
        return Err(other(format!(
            "a {PAYLOAD}-byte payload encodes as {} bytes, not {VALUE}",
            encoded.len()
        )));
    }
    let client = ctx.get_channel::<Msg>(&format!("{CLIENT}-active"))?;
    let subs = if options.any_pubsub() {
        (0..MAX_SUBSCRIBERS)
            .map(|i| ctx.get_channel::<Msg>(&format!("{}-active", sub_name(i))))
            .collect::<std::result::Result<Vec<_>, _>>()?
    } else {
        Vec::new()
    };
    for ch in std::iter::once(&client).chain(&subs) {
        match recv(ch, STEP_TIMEOUT)? {
            Msg::Ready => {}
            m => return Err(unexpected(&ch.name(), "Ready", &m)),
        }
    }
    let mut m = Main {
        ctx,
        plan,
        alt: options.alt,
        verbose: options.verbose,
        window: options.window.unwrap_or(PUBLISH_WINDOW as u32),
        client,
        subs,
        redis: redis.as_ref().ok().cloned(),
        topics: 0,
    };

    let mut kv: Vec<KvRow> = Vec::new();
    if options.any_kv() {
        for t in m.targets() {
            progress(&format!("{}: setting {} keys", t.name(), plan.keyspace));
            m.fill(&t, "key:", plan.keyspace, KvOp::Set)?;
        }
        for shape in Shape::ALL
            .into_iter()
            .filter(|s| options.selected(s.name()))
        {
            for op in [KvOp::Set, KvOp::Get] {
                kv.push(KvRow {
                    shape,
                    op,
                    rates: Rates::default(),
                });
            }
        }
    }
    let mut pubsub: Vec<PubsubRow> = FAN_OUTS
        .iter()
        .zip(plan.messages)
        .filter(|(n, _)| options.selected(&format!("pubsub-{n}")))
        .map(|(&subscribers, messages)| PubsubRow {
            subscribers,
            messages,
            rates: Rates::default(),
            yuki_missed: 0,
            yuki_pauses: 0,
        })
        .collect();

    for round in 0..plan.rounds {
        progress(&format!("round {} of {}", round + 1, plan.rounds));
        for row in &mut kv {
            for t in m.ordered(round) {
                let rate = m.kv(&t, row.shape, row.op, round, m.alt)?;
                match t {
                    Target::Yukicomm => row.rates.yuki.push(rate),
                    Target::Redis(_) => row.rates.redis.push(rate),
                }
            }
            if row.shape == Shape::Many && !m.alt {
                if let Some(t @ Target::Redis(_)) = m.targets().pop() {
                    let rate = m.kv(&t, row.shape, row.op, round, true)?;
                    row.rates.redis_shared.push(rate);
                }
            }
        }
        for row in &mut pubsub {
            for t in m.ordered(round) {
                let (rate, missed, pauses) = m.pubsub(&t, row.subscribers, row.messages)?;
                match t {
                    Target::Yukicomm => {
                        row.rates.yuki.push(rate);
                        row.yuki_missed += missed;
                        row.yuki_pauses += pauses;
                    }
                    Target::Redis(_) => row.rates.redis.push(rate),
                }
            }
        }
    }
    // Memory last: the rates are measured on stores holding only their own keys.
    let memory = if options.selected("memory") {
        Some(m.memory()?)
    } else {
        None
    };
    send(&m.client, Msg::Quit)?;
    for s in &m.subs {
        send(s, Msg::Quit)?;
    }
    Ok(Report {
        plan,
        options: options.clone(),
        redis,
        kv,
        pubsub,
        memory,
    })
}
