//! The shared store and publish/subscribe between real processes.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use support::{app, child, run_main, watchdog};
// Issue 8: the store's types a user names are at the crate root.
use yukicomm::{
    shared_memory, ChangeKind, Channel, Clock, Context, Fsync, HubConfig, MainContext, ManualClock,
    Publication, Store, StoreConfig, StoreError, SubscriberError, Ttl,
};

const T: Duration = Duration::from_secs(20);

/// In a main process `shared_memory()` reaches the app that started last in the
/// process, and the tests of this binary run in parallel: a test that calls it in its
/// main process holds this lock exclusively; the others hold it shared and use
/// `ctx.store()`.
static ONE_APP: RwLock<()> = RwLock::new(());

async fn snippet_child(ctx: Context) -> yukicomm::Result<()> {
    child(async move {
        let store = shared_memory();
        store.set("from-child", &"value from the child")?;
        let seen: Option<String> = store.get("from-main")?;
        ctx.passive_channel::<Option<String>>().send(seen)?;
        let _ = ctx.active_channel::<()>().recv_async().await;
        Ok(())
    })
    .await
}

#[test]
fn upstream_snippet_from_main_and_child() {
    let _alone = ONE_APP.write();
    let (mut app, _w) = test_app!(Duration::from_secs(60));
    app.on_before_start(|ctx| async move {
        ctx.store().set("from-main", &"value from main")?;
        Ok(())
    });
    app.add_target("snippet", snippet_child);
    run_main(app, |ctx| {
        let store = shared_memory();
        let back = ctx
            .get_channel::<Option<String>>("snippet-passive")
            .unwrap();
        assert_eq!(
            back.recv_timeout(T).unwrap().as_deref(),
            Some("value from main")
        );
        let v: Option<String> = store.get("from-child").unwrap();
        assert_eq!(v.as_deref(), Some("value from the child"));
        assert!(store.delete("from-child").unwrap());
        assert_eq!(store.get::<String>("from-child").unwrap(), None);
        let all = store.get_all().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(
            all["from-main"].decode::<String>().unwrap(),
            "value from main"
        );
    });
}

/// Main's side of a child that runs one store operation per command and answers with
/// its outcome (`Debug`-formatted), so that the main process can assert on it.
struct Remote {
    commands: Channel<String>,
    answers: Channel<String>,
}

impl Remote {
    fn new(ctx: &MainContext, child: &str) -> Remote {
        Remote {
            commands: ctx.get_channel(&format!("{child}-active")).unwrap(),
            answers: ctx.get_channel(&format!("{child}-passive")).unwrap(),
        }
    }

    fn ask(&self, command: &str) -> String {
        self.commands.send(command.into()).unwrap();
        self.answers
            .recv_timeout(T)
            .unwrap_or_else(|e| panic!("no answer to {command:?}: {e}"))
    }
}

/// A child's failure that is not a yukicomm error.
fn other(e: impl std::fmt::Display) -> yukicomm::Error {
    yukicomm::Error::Other(e.to_string())
}

/// Hub settings with the store's defaults changed by `f`.
fn store_config(f: impl FnOnce(&mut StoreConfig)) -> HubConfig {
    let mut store = StoreConfig::default();
    f(&mut store);
    HubConfig {
        store,
        ..HubConfig::default()
    }
}

// --- Read-your-writes across processes ---------------------------------------------------

const RYW_WRITES: u64 = 500;

/// Writes `k` = 1..=RYW_WRITES, telling main each value after `set` returned; then,
/// whenever main asks, reads `m` and says what it saw.
async fn ryw_child(ctx: Context) -> yukicomm::Result<()> {
    child(async move {
        let store = shared_memory();
        let passive = ctx.passive_channel::<u64>();
        for n in 1..=RYW_WRITES {
            store.set("k", &n)?;
            passive.send_async(n).await?;
        }
        let active = ctx.active_channel::<u64>();
        while active.recv_async().await.is_ok() {
            let seen: Option<u64> = store.get_async("m").await?;
            passive.send_async(seen.unwrap_or(0)).await?;
        }
        Ok(())
    })
    .await
}

/// A write that returned is seen by every read that starts after it, in any process.
#[test]
fn a_returned_write_is_read_by_every_other_process() {
    let _shared = ONE_APP.read();
    let (mut app, _w) = test_app!(Duration::from_secs(120));
    app.add_target("ryw", ryw_child);
    run_main(app, |ctx| {
        let store = ctx.store();
        let from_child = ctx.get_channel::<u64>("ryw-passive").unwrap();
        let mut last = 0;
        for n in 1..=RYW_WRITES {
            assert_eq!(from_child.recv_timeout(T).unwrap(), n);
            let seen: u64 = store.get("k").unwrap().expect("k is set");
            assert!(
                seen >= n,
                "the child's write of {n} returned, yet main read {seen}"
            );
            assert!(seen >= last, "reads went back from {last} to {seen}");
            last = seen;
        }
        let to_child = ctx.get_channel::<u64>("ryw-active").unwrap();
        for j in 1..=5 {
            store.set("m", &j).unwrap();
            to_child.send(j).unwrap();
            assert_eq!(from_child.recv_timeout(T).unwrap(), j, "the child read m");
        }
    });
}

// --- Many requests in flight on one connection ------------------------------------------

const IN_FLIGHT: u64 = 2000;

/// Issues IN_FLIGHT `set_async` calls at once, then as many `get_async` and `incr_async`
/// calls at once, and checks that each got the reply to its own request; tells main
/// `true` when they all did.
async fn in_flight_child(ctx: Context) -> yukicomm::Result<()> {
    child(async move {
        let store = shared_memory();
        let sets = (0..IN_FLIGHT).map(|i| {
            let store = &store;
            async move { store.set_async(&format!("p:{i}"), &i).await }
        });
        futures::future::try_join_all(sets).await?;
        let gets = (0..IN_FLIGHT).map(|i| {
            let store = &store;
            async move { store.get_async::<u64>(&format!("p:{i}")).await }
        });
        let got = futures::future::try_join_all(gets).await?;
        let all_match = got.iter().enumerate().all(|(i, v)| *v == Some(i as u64));
        let incrs = (0..IN_FLIGHT).map(|_| store.incr_async("in-flight", 1));
        let mut counts = futures::future::try_join_all(incrs).await?;
        counts.sort_unstable();
        let each_once = counts.iter().copied().eq(1..=IN_FLIGHT as i64);
        ctx.passive_channel::<bool>()
            .send_async(all_match && each_once)
            .await?;
        let _ = ctx.active_channel::<()>().recv_async().await;
        Ok(())
    })
    .await
}

/// Thousands of async calls in flight at once on one connection (their requests share
/// writes): every call gets the reply to its own request, and every write is applied.
#[test]
fn many_async_calls_in_flight_each_get_their_own_reply() {
    let _shared = ONE_APP.read();
    let (mut app, _w) = test_app!(Duration::from_secs(120));
    app.add_target("flight", in_flight_child);
    run_main(app, |ctx| {
        let ok = ctx.get_channel::<bool>("flight-passive").unwrap();
        assert!(
            ok.recv_timeout(T).unwrap(),
            "a call got another call's reply"
        );
        let store = ctx.store();
        assert_eq!(
            store.get::<i64>("in-flight").unwrap(),
            Some(IN_FLIGHT as i64)
        );
        for i in [0, 1, IN_FLIGHT / 2, IN_FLIGHT - 1] {
            assert_eq!(store.get::<u64>(&format!("p:{i}")).unwrap(), Some(i));
        }
        assert_eq!(store.len().unwrap(), IN_FLIGHT as usize + 1);
        ctx.get_channel::<()>("flight-active")
            .unwrap()
            .send(())
            .unwrap();
    });
}

// --- Atomic counter under contention -----------------------------------------------------

const COUNTER_CHILDREN: usize = 8;
const COUNTER_THREADS: usize = 4;
const COUNTER_PER_THREAD: i64 = 10_000;

/// Increments `counter` from COUNTER_THREADS std threads with the blocking API, then
/// reports the sum of the values its increments returned.
async fn counter_child(ctx: Context) -> yukicomm::Result<()> {
    child(async move {
        let sum = tokio::task::spawn_blocking(|| {
            let threads: Vec<_> = (0..COUNTER_THREADS)
                .map(|_| {
                    std::thread::spawn(|| {
                        let store = shared_memory();
                        (0..COUNTER_PER_THREAD)
                            .map(|_| store.incr("counter", 1).expect("incr"))
                            .sum::<i64>()
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().expect("an incrementing thread panicked"))
                .sum::<i64>()
        })
        .await
        .map_err(other)?;
        ctx.passive_channel::<i64>().send_async(sum).await?;
        let _ = ctx.active_channel::<()>().recv_async().await;
        Ok(())
    })
    .await
}

/// `incr` is atomic: concurrent increments from many processes and threads all count,
/// and each returns a distinct new value.
#[test]
fn concurrent_increments_from_many_processes_all_count() {
    let _shared = ONE_APP.read();
    let (mut app, _w) = test_app!(Duration::from_secs(300));
    for i in 0..COUNTER_CHILDREN {
        app.add_target(&format!("c{i}"), counter_child);
    }
    run_main(app, |ctx| {
        let started = Instant::now();
        let mut sum = 0;
        for i in 0..COUNTER_CHILDREN {
            let done = ctx.get_channel::<i64>(&format!("c{i}-passive")).unwrap();
            sum += done.recv_timeout(Duration::from_secs(280)).unwrap();
        }
        let total = (COUNTER_CHILDREN * COUNTER_THREADS) as i64 * COUNTER_PER_THREAD;
        eprintln!("{total} increments took {:?}", started.elapsed());
        assert_eq!(ctx.store().get::<i64>("counter").unwrap(), Some(total));
        // Atomic increments return exactly 1..=total between them.
        assert_eq!(sum, total * (total + 1) / 2, "the values incr returned");
    });
}

// --- compare_and_swap under contention ---------------------------------------------------

const CAS_CHILDREN: usize = 4;
const CAS_INCREMENTS: u64 = 300;

/// On main's go, makes CAS_INCREMENTS successful get + compare_and_swap increments of
/// `cas`, then reports how many swaps failed.
async fn cas_child(ctx: Context) -> yukicomm::Result<()> {
    child(async move {
        let store = shared_memory();
        let go = ctx.active_channel::<()>();
        go.recv_async().await.map_err(other)?;
        let mut failed = 0u64;
        for _ in 0..CAS_INCREMENTS {
            loop {
                let old: Option<i64> = store.get_async("cas").await?;
                let new = old.unwrap_or(0) + 1;
                if store
                    .compare_and_swap_async("cas", old.as_ref(), Some(&new))
                    .await?
                {
                    break;
                }
                failed += 1;
            }
        }
        ctx.passive_channel::<u64>().send_async(failed).await?;
        let _ = go.recv_async().await;
        Ok(())
    })
    .await
}

/// `compare_and_swap` is atomic: a read-modify-write loop built on it loses no update.
#[test]
fn compare_and_swap_loops_lose_no_update() {
    let _shared = ONE_APP.read();
    let (mut app, _w) = test_app!(Duration::from_secs(180));
    for i in 0..CAS_CHILDREN {
        app.add_target(&format!("cas{i}"), cas_child);
    }
    run_main(app, |ctx| {
        for i in 0..CAS_CHILDREN {
            let go = ctx.get_channel::<()>(&format!("cas{i}-active")).unwrap();
            go.send(()).unwrap();
        }
        let mut failed = Vec::new();
        for i in 0..CAS_CHILDREN {
            let done = ctx.get_channel::<u64>(&format!("cas{i}-passive")).unwrap();
            failed.push(done.recv_timeout(Duration::from_secs(150)).unwrap());
        }
        eprintln!("failed swaps per child: {failed:?}");
        let total = CAS_CHILDREN as i64 * CAS_INCREMENTS as i64;
        assert_eq!(ctx.store().get::<i64>("cas").unwrap(), Some(total));
    });
}

// --- Expiry with a clock driven by the test ----------------------------------------------

/// Runs the TTL test's commands.
async fn ttl_child(ctx: Context) -> yukicomm::Result<()> {
    child(async move {
        let store = shared_memory();
        let mut watch = None;
        let commands = ctx.active_channel::<String>();
        let answers = ctx.passive_channel::<String>();
        while let Ok(command) = commands.recv_async().await {
            let answer = match command.as_str() {
                "set session for 5s" => format!(
                    "{:?}",
                    store
                        .set_with_ttl_async("session", &"x", Duration::from_secs(5))
                        .await
                ),
                "contains session" => format!("{:?}", store.contains_async("session").await),
                "watch session2" => match store.watch("session2") {
                    Ok(w) => {
                        watch = Some(w);
                        "watching".into()
                    }
                    Err(e) => format!("{e:?}"),
                },
                "next change" => {
                    let w = watch.as_ref().expect("watching");
                    match tokio::time::timeout(T, w.recv_async()).await {
                        Ok(Ok(c)) => format!("{:?} {}", c.kind, c.key),
                        other => format!("{other:?}"),
                    }
                }
                "persist sticky" => format!(
                    "{:?} {:?}",
                    store.expire_async("sticky", None).await,
                    store.expire_async("missing", None).await
                ),
                other => format!("unknown command {other:?}"),
            };
            answers.send_async(answer).await?;
        }
        Ok(())
    })
    .await
}

/// A key with a TTL lives exactly that long on the store's clock, expires unread (its
/// watchers are told), and `expire(key, None)` makes it permanent.
#[test]
fn keys_expire_on_the_store_clock() {
    let _shared = ONE_APP.read();
    let (mut app, _w) = test_app!(Duration::from_secs(120));
    let clock = ManualClock::new();
    app.hub_config(store_config(|s| s.clock = Clock::Manual(clock.clone())));
    app.add_target("ttl", ttl_child);
    run_main(app, move |ctx| {
        let store = ctx.store();
        let child = Remote::new(&ctx, "ttl");
        let ms = Duration::from_millis;

        assert_eq!(child.ask("set session for 5s"), "Ok(())");
        assert_eq!(store.ttl("session").unwrap(), Ttl::Remaining(ms(5000)));
        clock.advance(ms(4999));
        assert_eq!(store.ttl("session").unwrap(), Ttl::Remaining(ms(1)));
        assert_eq!(child.ask("contains session"), "Ok(true)");
        clock.advance(ms(1));
        assert!(!store.contains("session").unwrap());
        assert_eq!(store.get::<String>("session").unwrap(), None);
        assert_eq!(store.ttl("session").unwrap(), Ttl::NoKey);
        assert_eq!(child.ask("contains session"), "Ok(false)");

        // Nobody reads session2: the hub's sweep expires it and tells the watcher.
        assert_eq!(child.ask("watch session2"), "watching");
        store
            .set_with_ttl("session2", &2u32, Duration::from_secs(10))
            .unwrap();
        assert_eq!(child.ask("next change"), "Set session2");
        clock.advance(Duration::from_secs(10));
        assert_eq!(child.ask("next change"), "Expired session2");

        store
            .set_with_ttl("sticky", &"s", Duration::from_secs(1))
            .unwrap();
        assert_eq!(store.ttl("sticky").unwrap(), Ttl::Remaining(ms(1000)));
        assert_eq!(child.ask("persist sticky"), "Ok(true) Ok(false)");
        assert_eq!(store.ttl("sticky").unwrap(), Ttl::Forever);
        clock.advance(Duration::from_secs(2));
        assert!(store.contains("sticky").unwrap());
        assert_eq!(store.ttl("sticky").unwrap(), Ttl::Forever);
        assert_eq!(store.ttl("missing").unwrap(), Ttl::NoKey);
    });
}

// --- Publish/subscribe between processes -------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Event {
    seq: u32,
    note: String,
}

const EVENTS: u32 = 200;

fn event_topic(seq: u32) -> &'static str {
    if seq.is_multiple_of(2) {
        "events.a"
    } else {
        "events.b"
    }
}

/// What the subscriber child tells main.
#[derive(Debug, Serialize, Deserialize)]
enum Heard {
    Ready,
    All {
        events: Vec<(String, u32)>,
        alerts: Vec<(String, u32)>,
        /// What `try_recv` on the glob subscription gave after everything arrived.
        after: String,
    },
}

/// On main's go, publishes the events (with a few to `other.x` among them) and then
/// the alerts, and reports what each publish returned.
async fn publisher(ctx: Context) -> yukicomm::Result<()> {
    child(async move {
        let store = shared_memory();
        let go = ctx.active_channel::<()>();
        go.recv_async().await.map_err(other)?;
        let mut plan = Vec::new();
        for seq in 0..EVENTS {
            if seq.is_multiple_of(50) {
                plan.push(("other.x", seq));
            }
            plan.push((event_topic(seq), seq));
        }
        plan.push(("other.x", EVENTS));
        let alerts = [
            "alerts.fire",
            "alerts.fire2",
            "alerts",
            "alerts.fir",
            "alerts.fire",
        ];
        plan.extend(alerts.into_iter().zip(0..));
        let mut returned = Vec::new();
        for (topic, seq) in plan {
            let event = Event {
                seq,
                note: format!("{seq} on {topic}"),
            };
            let n = store.publish_async(topic, &event).await?;
            returned.push((topic.to_string(), n));
        }
        ctx.passive_channel::<Vec<(String, usize)>>()
            .send_async(returned)
            .await?;
        let _ = go.recv_async().await;
        Ok(())
    })
    .await
}

/// Subscribes to `events.*` and to exactly `alerts.fire`, says so, and reports what
/// each received.
async fn subscriber(ctx: Context) -> yukicomm::Result<()> {
    child(async move {
        let store = shared_memory();
        let events = store.subscriber::<Event>("events.*")?;
        let alerts = store.subscriber::<Event>("alerts.fire")?;
        let report = ctx.passive_channel::<Heard>();
        report.send_async(Heard::Ready).await?;
        let mut heard = Vec::new();
        for _ in 0..EVENTS {
            let p = tokio::time::timeout(T, events.recv_async())
                .await
                .map_err(other)??;
            assert_eq!(p.note, format!("{} on {}", p.seq, p.topic));
            heard.push((p.topic, p.value.seq));
        }
        let mut heard_alerts = Vec::new();
        for _ in 0..2 {
            let p = tokio::time::timeout(T, alerts.recv_async())
                .await
                .map_err(other)??;
            heard_alerts.push((p.topic, p.value.seq));
        }
        let after = format!("{:?}", events.try_recv().map(|p| p.value));
        report
            .send_async(Heard::All {
                events: heard,
                alerts: heard_alerts,
                after,
            })
            .await?;
        let _ = ctx.active_channel::<()>().recv_async().await;
        Ok(())
    })
    .await
}

/// A publication reaches every matching subscription, in any process, in order, and
/// nothing else: glob and exact patterns, receivers and callbacks.
#[test]
fn publications_reach_exactly_the_matching_subscribers_in_order() {
    let _shared = ONE_APP.read();
    let (mut app, _w) = test_app!(Duration::from_secs(120));
    app.add_target("publisher", publisher);
    app.add_target("subscriber", subscriber);
    run_main(app, |ctx| {
        let heard = ctx.get_channel::<Heard>("subscriber-passive").unwrap();
        assert!(matches!(heard.recv_timeout(T).unwrap(), Heard::Ready));
        let (tx, rx) = std::sync::mpsc::channel();
        let _sub = ctx
            .store()
            .subscribe("events.*", move |p: Publication<Event>| {
                let _ = tx.send((p.topic.clone(), p.value));
            })
            .unwrap();
        ctx.get_channel::<()>("publisher-active")
            .unwrap()
            .send(())
            .unwrap();

        let expected: Vec<(String, u32)> = (0..EVENTS)
            .map(|seq| (event_topic(seq).to_string(), seq))
            .collect();
        for (topic, seq) in &expected {
            let (t, event) = rx.recv_timeout(T).unwrap();
            assert_eq!((&t, event.seq), (topic, *seq), "main's callback");
            assert_eq!(event.note, format!("{seq} on {topic}"));
        }

        let returned = ctx
            .get_channel::<Vec<(String, usize)>>("publisher-passive")
            .unwrap()
            .recv_timeout(T)
            .unwrap();
        assert_eq!(returned.len(), EVENTS as usize + 5 + 5);
        for (topic, n) in &returned {
            let expected = match topic.as_str() {
                "events.a" | "events.b" => 2,
                "alerts.fire" => 1,
                _ => 0,
            };
            assert_eq!(*n, expected, "publish to {topic} reached {n} subscriptions");
        }

        match heard.recv_timeout(T).unwrap() {
            Heard::All {
                events,
                alerts,
                after,
            } => {
                assert_eq!(events, expected, "the subscriber child's events");
                assert_eq!(
                    alerts,
                    vec![
                        ("alerts.fire".to_string(), 0),
                        ("alerts.fire".to_string(), 4)
                    ]
                );
                assert_eq!(after, r#"Err(Empty { pattern: "events.*" })"#);
            }
            other => panic!("expected the subscriber's report, got {other:?}"),
        }
        assert!(rx.try_recv().is_err(), "main's callback got one too many");
    });
}

/// A child hands a subscriber to a handler, naming the message type once.
async fn handing_child(ctx: Context) -> yukicomm::Result<()> {
    child(async move {
        let store = shared_memory();
        let report = ctx.passive_channel::<String>();
        let forward = report.clone();
        // Issue 8: one type parameter is enough for a callback subscription.
        let sub = store.subscriber::<String>("greetings")?.handle(move |p| {
            let forward = forward.clone();
            async move {
                forward
                    .send_async(format!("{}: {}", p.topic, p.value))
                    .await
            }
        });
        report.send_async("ready".into()).await?;
        let _ = ctx.active_channel::<()>().recv_async().await;
        report
            .send_async(format!("missed {}", sub.missed()))
            .await?;
        let _ = ctx.active_channel::<()>().recv_async().await;
        Ok(())
    })
    .await
}

#[test]
fn a_subscriber_handed_to_a_handler_keeps_receiving() {
    let _shared = ONE_APP.read();
    let (mut app, _w) = test_app!(Duration::from_secs(120));
    app.add_target("handing", handing_child);
    run_main(app, |ctx| {
        let store = ctx.store();
        let report = ctx.get_channel::<String>("handing-passive").unwrap();
        assert_eq!(report.recv_timeout(T).unwrap(), "ready");
        for word in ["hello", "again"] {
            assert_eq!(store.publish("greetings", &word).unwrap(), 1);
        }
        assert_eq!(report.recv_timeout(T).unwrap(), "greetings: hello");
        assert_eq!(report.recv_timeout(T).unwrap(), "greetings: again");
        let go = ctx.get_channel::<()>("handing-active").unwrap();
        go.send(()).unwrap();
        assert_eq!(report.recv_timeout(T).unwrap(), "missed 0");
        go.send(()).unwrap();
    });
}

// --- A slow subscriber misses messages and is told how many ------------------------------

/// Runs the slow-subscriber test's commands.
async fn slow_child(ctx: Context) -> yukicomm::Result<()> {
    child(async move {
        let store = shared_memory();
        let mut sub = None;
        let commands = ctx.active_channel::<String>();
        let answers = ctx.passive_channel::<String>();
        while let Ok(command) = commands.recv_async().await {
            let answer = match command.as_str() {
                "subscribe" => match store.subscriber::<u32>("slow") {
                    Ok(s) => {
                        sub = Some(s);
                        "subscribed".into()
                    }
                    Err(e) => format!("{e:?}"),
                },
                "recv" => {
                    let s = sub.as_ref().expect("subscribed");
                    match tokio::time::timeout(T, s.recv_async()).await {
                        Ok(r) => format!("{:?}", r.map(|p| p.value)),
                        Err(_) => "nothing arrived".into(),
                    }
                }
                "try" => {
                    let s = sub.as_ref().expect("subscribed");
                    format!("{:?}", s.try_recv().map(|p| p.value))
                }
                "flush" => format!("{:?}", store.flush()),
                "missed" => sub.as_ref().expect("subscribed").missed().to_string(),
                other => format!("unknown command {other:?}"),
            };
            answers.send_async(answer).await?;
        }
        Ok(())
    })
    .await
}

/// A subscriber that does not read gets at most `subscription_buffer` messages; the
/// rest are dropped (publish says so) and counted, and the count comes before the next
/// message once it reads again.
#[test]
fn a_slow_subscriber_misses_messages_and_is_told_how_many() {
    let _shared = ONE_APP.read();
    let (mut app, _w) = test_app!(Duration::from_secs(120));
    app.hub_config(store_config(|s| s.subscription_buffer = 4));
    app.add_target("slow", slow_child);
    run_main(app, |ctx| {
        let store = ctx.store();
        let child = Remote::new(&ctx, "slow");
        assert_eq!(child.ask("subscribe"), "subscribed");
        let reached: Vec<usize> = (0..10u32)
            .map(|i| store.publish("slow", &i).unwrap())
            .collect();
        assert_eq!(reached, [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(store.publish("nobody.listens", &99u32).unwrap(), 0);

        for i in 0..4 {
            assert_eq!(child.ask("recv"), format!("Ok({i})"));
        }
        // The child's credit returns are sent without waiting: flush waits for them.
        assert_eq!(child.ask("flush"), "Ok(())");
        assert_eq!(store.publish("slow", &10u32).unwrap(), 1);
        assert_eq!(
            child.ask("recv"),
            r#"Err(Missed { pattern: "slow", count: 6 })"#
        );
        assert_eq!(child.ask("recv"), "Ok(10)");
        assert_eq!(child.ask("missed"), "6");
    });
}

/// Issue 8: a subscriber that fell behind is told what it missed once it has room
/// again, even when nothing more is ever published.
#[test]
fn a_slow_subscriber_is_told_what_it_missed_without_more_traffic() {
    let _shared = ONE_APP.read();
    let (mut app, _w) = test_app!(Duration::from_secs(120));
    app.hub_config(store_config(|s| s.subscription_buffer = 4));
    app.add_target("slow", slow_child);
    run_main(app, |ctx| {
        let store = ctx.store();
        let child = Remote::new(&ctx, "slow");
        assert_eq!(child.ask("subscribe"), "subscribed");
        let reached: usize = (0..10u32).map(|i| store.publish("slow", &i).unwrap()).sum();
        assert_eq!(reached, 4, "the buffer of 4 fills, the other 6 are dropped");
        // Publishing has stopped for good. The subscriber drains its buffer ...
        for i in 0..4 {
            assert_eq!(child.ask("recv"), format!("Ok({i})"));
        }
        // ... and is told of the 6 it missed, with no further publication.
        assert_eq!(
            child.ask("recv"),
            r#"Err(Missed { pattern: "slow", count: 6 })"#
        );
        assert_eq!(child.ask("missed"), "6");
        assert_eq!(child.ask("try"), r#"Err(Empty { pattern: "slow" })"#);
    });
}

// --- Durability across kill -9 of the main process ---------------------------------------

const JOURNAL_ENV: &str = "YUKICOMM_TEST_STORE_JOURNAL";
const ACKS_BEFORE_KILL: usize = 300;

/// Writes `key{i}` = i for i = 0, 1, ... and prints `acked {i}` after each returned.
async fn journal_writer(_ctx: Context) -> yukicomm::Result<()> {
    child(async move {
        let store = shared_memory();
        for i in 0u64.. {
            store.set_async(&format!("key{i}"), &i).await?;
            println!("acked {i}");
        }
        Ok(())
    })
    .await
}

/// Not a test by itself: with `JOURNAL_ENV` set, this is the main process that
/// `acked_writes_survive_kill_9_of_the_main_process` starts and kills.
#[test]
fn journal_writer_main_process() {
    let Some(journal) = std::env::var_os(JOURNAL_ENV) else {
        return;
    };
    let (mut app, _w) = test_app!(Duration::from_secs(120));
    app.hub_config(store_config(|s| {
        s.journal = Some(journal.into());
        s.fsync = Fsync::Never;
    }));
    app.add_target("writer", journal_writer);
    app.run().expect("the app runs");
}

/// Kills (and reaps) a process when dropped.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs an app whose store is restored from `journal`, with `check` as its main body.
fn restart_with(test: &str, journal: &Path, check: impl FnOnce(Store) + Send + 'static) {
    let mut app = app(test);
    let journal = journal.to_path_buf();
    app.hub_config(store_config(|s| s.journal = Some(journal)));
    run_main(app, move |ctx| check(ctx.store()));
}

/// Every write acknowledged before the main process is killed with SIGKILL is in the
/// store after a restart with the same journal, even with a torn tail.
#[test]
fn acked_writes_survive_kill_9_of_the_main_process() {
    let _shared = ONE_APP.read();
    let name = test_name!();
    let _w = watchdog(name, Duration::from_secs(180));
    let base = std::env::temp_dir().join(format!("yukicomm-store-test-{}", std::process::id()));
    let journal = base.with_extension("journal");
    let stderr_log = base.with_extension("stderr");
    let _ = std::fs::remove_file(&journal);

    let mut main = Reap(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "journal_writer_main_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(JOURNAL_ENV, &journal)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_log).unwrap())
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(main.0.stdout.take().unwrap());
    let mut acked: Vec<u64> = Vec::new();
    let mut read_ack = |out: &mut BufReader<std::process::ChildStdout>| -> Option<()> {
        let mut line = String::new();
        loop {
            line.clear();
            if out.read_line(&mut line).ok()? == 0 {
                return None;
            }
            // A line cut short by the kill is no ack.
            let complete = line.ends_with('\n');
            if let Some(i) = line.trim_end().strip_prefix("[writer] acked ") {
                if complete {
                    acked.push(i.parse().unwrap());
                    return Some(());
                }
            }
        }
    };
    for _ in 0..ACKS_BEFORE_KILL {
        if read_ack(&mut out).is_none() {
            panic!(
                "the main process's output ended early; its stderr:\n{}",
                std::fs::read_to_string(&stderr_log).unwrap_or_default()
            );
        }
    }
    // SAFETY: a plain syscall on a process we started and have not reaped.
    assert_eq!(unsafe { libc::kill(main.0.id() as i32, libc::SIGKILL) }, 0);
    main.0.wait().unwrap();
    // Acks already forwarded before the kill count too.
    while read_ack(&mut out).is_some() {}
    let acked_count = acked.len() as u64;
    assert_eq!(acked, (0..acked_count).collect::<Vec<_>>());
    eprintln!("{acked_count} writes acknowledged before the kill");

    // What a crash in the middle of a write leaves: a record cut short.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&journal)
        .unwrap()
        .write_all(&[0x20, 0, 0, 0, 0xde, 0xad, 0xbe])
        .unwrap();
    restart_with(name, &journal, move |store| {
        for i in 0..acked_count {
            assert_eq!(
                store.get::<u64>(&format!("key{i}")).unwrap(),
                Some(i),
                "acknowledged write key{i} is lost"
            );
        }
        store.set("after-restart", &true).unwrap();
    });
    // Writes after the torn tail was cut off are kept too.
    restart_with(name, &journal, move |store| {
        assert_eq!(store.get::<bool>("after-restart").unwrap(), Some(true));
        assert!(store.len().unwrap() as u64 > acked_count);
        assert_eq!(
            store
                .get::<u64>(&format!("key{}", acked_count - 1))
                .unwrap(),
            Some(acked_count - 1)
        );
    });
    let _ = std::fs::remove_file(&journal);
    let _ = std::fs::remove_file(&stderr_log);
}

// --- Errors and limits -------------------------------------------------------------------

/// Runs the error test's commands.
async fn limits_child(ctx: Context) -> yukicomm::Result<()> {
    child(async move {
        let store = shared_memory();
        let big = "x".repeat(2000);
        let commands = ctx.active_channel::<String>();
        let answers = ctx.passive_channel::<String>();
        while let Ok(command) = commands.recv_async().await {
            let answer = match command.as_str() {
                "get n as u32" => format!("{:?}", store.get::<u32>("n")),
                "set big" => format!("{:?}", store.set("big", &big)),
                "set small" => format!("{:?}", store.set("small", &"fits")),
                "get small" => format!("{:?}", store.get::<String>("small")),
                "set_nowait big, flush" => {
                    let sent = store.set_nowait("big", &big);
                    format!("{sent:?} {:?}", store.flush())
                }
                "flush" => format!("{:?}", store.flush()),
                "set empty key" => format!("{:?}", store.set("", &1)),
                "set long key" => format!("{:?}", store.set(&"k".repeat(1025), &1)),
                "publish_many" => format!("{:?}", store.publish_many("batch", ["a", "b", "c"])),
                "publish_many with a big one" => {
                    format!("{:?}", store.publish_many("batch", ["d", &big]))
                }
                // 100 messages of 1000 bytes: more than the 64 KiB frame limit.
                "publish_many past the frame limit" => format!(
                    "{:?}",
                    store.publish_many("batch", vec!["y".repeat(1000); 100])
                ),
                other => format!("unknown command {other:?}"),
            };
            answers.send_async(answer).await?;
        }
        Ok(())
    })
    .await
}

/// Wrong types, non-integers, oversized values and bad keys are precise errors, and
/// the store goes on working after each.
#[test]
fn errors_name_the_key_and_the_store_keeps_working() {
    let _shared = ONE_APP.read();
    let (mut app, _w) = test_app!(Duration::from_secs(120));
    app.hub_config(HubConfig {
        max_frame: 64 * 1024,
        ..store_config(|s| s.max_value = 1024)
    });
    app.add_target("limits", limits_child);
    run_main(app, |ctx| {
        let store = ctx.store();
        store.set("n", &"text").unwrap();
        match store.get::<u32>("n") {
            Err(StoreError::Decode { key, type_name, .. }) => {
                assert_eq!(key, "n");
                assert_eq!(type_name, "u32");
            }
            other => panic!("expected a decode error, got {other:?}"),
        }
        assert_eq!(
            store.incr("n", 1),
            Err(StoreError::NotAnInteger { key: "n".into() })
        );
        assert_eq!(store.get::<String>("n").unwrap().as_deref(), Some("text"));
        assert!(matches!(
            store.get::<u32>(""),
            Err(StoreError::InvalidKey { .. })
        ));
        let big = "x".repeat(2000);
        store.set_nowait("big", &big).unwrap();
        store.set_nowait("fine", &1).unwrap();
        store.set_nowait("big", &big).unwrap();
        assert!(matches!(
            store.flush(),
            Err(StoreError::NowaitFailed { count: 2, .. })
        ));
        assert_eq!(store.flush(), Ok(()));
        assert_eq!(store.get::<i32>("fine").unwrap(), Some(1));

        let child = Remote::new(&ctx, "limits");
        let answer = child.ask("get n as u32");
        assert!(
            answer.starts_with(r#"Err(Decode { key: "n", type_name: "u32""#),
            "{answer}"
        );
        let answer = child.ask("set big");
        assert!(
            answer.starts_with(r#"Err(TooLarge { key: "big""#),
            "{answer}"
        );
        assert_eq!(child.ask("set small"), "Ok(())");
        assert_eq!(child.ask("get small"), r#"Ok(Some("fits"))"#);
        let answer = child.ask("set_nowait big, flush");
        assert!(
            answer.starts_with("Ok(()) Err(NowaitFailed { count: 1,"),
            "{answer}"
        );
        assert_eq!(child.ask("flush"), "Ok(())");
        let answer = child.ask("set empty key");
        assert!(answer.starts_with("Err(InvalidKey {"), "{answer}");
        let answer = child.ask("set long key");
        assert!(answer.starts_with("Err(InvalidKey {"), "{answer}");
        assert_eq!(child.ask("get small"), r#"Ok(Some("fits"))"#);
        assert_eq!(store.get::<String>("big").unwrap(), None);

        // A batch publishes in order, or not at all.
        let batch = store.subscriber::<String>("batch").unwrap();
        assert_eq!(child.ask("publish_many"), "Ok(3)");
        for expected in ["a", "b", "c"] {
            assert_eq!(batch.recv_timeout(T).unwrap().value, expected);
        }
        let answer = child.ask("publish_many with a big one");
        assert!(
            answer.starts_with(r#"Err(TooLarge { key: "batch""#),
            "{answer}"
        );
        let answer = child.ask("publish_many past the frame limit");
        assert!(
            answer.starts_with(r#"Err(TooLarge { key: "batch""#),
            "{answer}"
        );
        assert_eq!(child.ask("publish_many"), "Ok(3)");
        assert_eq!(batch.recv_timeout(T).unwrap().value, "a");
    });
}

// --- Watching a prefix -------------------------------------------------------------------

/// Watches `cfg.` and reports every change until `cfg.end` is set.
async fn cfg_watcher(ctx: Context) -> yukicomm::Result<()> {
    child(async move {
        let watch = shared_memory().watch_prefix("cfg.")?;
        let report = ctx.passive_channel::<Vec<String>>();
        report.send_async(Vec::new()).await?;
        let mut seen = Vec::new();
        loop {
            let c = tokio::time::timeout(T, watch.recv_async())
                .await
                .map_err(other)??;
            seen.push(match c.kind {
                ChangeKind::Set => {
                    let value: String = c.value.as_ref().expect("a set has a value").decode()?;
                    format!("Set {}={value}", c.key)
                }
                kind => format!("{kind:?} {}", c.key),
            });
            if c.key == "cfg.end" {
                break;
            }
        }
        report.send_async(seen).await?;
        let _ = ctx.active_channel::<()>().recv_async().await;
        Ok(())
    })
    .await
}

/// A prefix watch in another process sees every set (with its value) and delete of
/// the keys under the prefix, in order, and nothing else.
#[test]
fn a_prefix_watch_sees_changes_under_the_prefix_only() {
    let _shared = ONE_APP.read();
    let (mut app, _w) = test_app!(Duration::from_secs(120));
    app.add_target("watcher", cfg_watcher);
    run_main(app, |ctx| {
        let store = ctx.store();
        let report = ctx.get_channel::<Vec<String>>("watcher-passive").unwrap();
        assert!(report.recv_timeout(T).unwrap().is_empty(), "watching");
        let exact = store.watch("cfg.b").unwrap();

        store.set("cfg.a", &"one").unwrap();
        store.set("other.a", &"no").unwrap();
        store.set("cfgx", &"no").unwrap();
        store.set("xcfg.a", &"no").unwrap();
        store.set("cfg.b", &"two").unwrap();
        assert!(store.delete("cfg.a").unwrap());
        assert!(!store.delete("cfg.missing").unwrap());
        assert!(store.delete("other.a").unwrap());
        store.set("cfg.end", &"end").unwrap();

        assert_eq!(
            report.recv_timeout(T).unwrap(),
            [
                "Set cfg.a=one",
                "Set cfg.b=two",
                "Deleted cfg.a",
                "Set cfg.end=end"
            ]
        );
        let change = exact.recv_timeout(T).unwrap();
        assert_eq!(
            (change.key.as_str(), change.kind),
            ("cfg.b", ChangeKind::Set)
        );
        assert_eq!(change.value.unwrap().decode::<String>().unwrap(), "two");
        assert!(matches!(
            exact.try_recv(),
            Err(SubscriberError::Empty { .. })
        ));
    });
}
