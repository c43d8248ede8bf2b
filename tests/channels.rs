//! Channels between real processes: duplex, ordering, exactly-once delivery, errors,
//! modes, channels inside messages, select, close, peer death.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use support::{child, run_main};
use yukicomm::{
    accept_all, Channel, Context, RecvError, RecvTimeoutError, RegistryError, RestartPolicy,
    Selector, SendError,
};

const T: Duration = Duration::from_secs(20);

async fn echo(ctx: Context) -> yukicomm::Result<()> {
    child(async move {
        ctx.passive_channel::<String>()
            .send("hello from the child".into())?;
        let active = ctx.active_channel::<String>();
        while let Ok(s) = active.recv_async().await {
            active.send_async(s.to_uppercase()).await?;
        }
        Ok(())
    })
    .await
}

#[test]
fn duplex_both_ways() {
    let (mut app, _w) = test_app!(Duration::from_secs(60));
    app.add_target("echo", echo);
    run_main(app, |ctx| {
        let passive = ctx.get_channel::<String>("echo-passive").unwrap();
        assert_eq!(passive.recv_timeout(T).unwrap(), "hello from the child");
        let active = ctx.get_channel::<String>("echo-active").unwrap();
        for word in ["ping", "pong", "done"] {
            active.send(word.into()).unwrap();
            assert_eq!(active.recv_timeout(T).unwrap(), word.to_uppercase());
        }
        // Nothing else arrives: each message was delivered once, and a process never
        // receives its own message.
        assert!(matches!(
            active.recv_timeout(Duration::from_millis(200)),
            Err(RecvTimeoutError::Timeout { .. })
        ));
    });
}

const PER_SENDER: u32 = 2000;

async fn sender(ctx: Context) -> yukicomm::Result<()> {
    child(async move {
        let id: u32 = ctx.name().trim_start_matches('s').parse().expect("sN");
        let sink = ctx.get_channel_async::<(u32, u32)>("sink").await?;
        for seq in 0..PER_SENDER {
            sink.send_async((id, seq)).await?;
        }
        // Stay until told to go, so that nothing is cut short.
        let _ = ctx.active_channel::<()>().recv_async().await;
        Ok(())
    })
    .await
}

#[test]
fn order_is_kept_per_sender_with_four_concurrent_senders() {
    let (mut app, _w) = test_app!(Duration::from_secs(90));
    for i in 0..4 {
        app.add_target(&format!("s{i}"), sender);
    }
    // The main process holds its end from the start: senders that find it unheld
    // would be told it is disconnected once their window is used up.
    let slot = std::sync::Arc::new(parking_lot::Mutex::new(None));
    let keep = slot.clone();
    app.on_before_start(move |ctx| {
        let keep = keep.clone();
        async move {
            let sink = ctx.channel::<(u32, u32)>()?;
            ctx.set_channel("sink", &sink)?;
            *keep.lock() = Some(sink);
            Ok(())
        }
    });
    run_main(app, move |_| {
        let sink: Channel<(u32, u32)> = slot.lock().take().expect("created before start");
        let mut next: HashMap<u32, u32> = HashMap::new();
        for _ in 0..4 * PER_SENDER {
            let (id, seq) = sink.recv_timeout(T).unwrap();
            let expected = next.entry(id).or_insert(0);
            assert_eq!(seq, *expected, "sender {id} out of order");
            *expected += 1;
        }
        assert_eq!(next.len(), 4);
        assert!(next.values().all(|&n| n == PER_SENDER));
        assert!(
            sink.recv_timeout(Duration::from_millis(200)).is_err(),
            "a message arrived twice"
        );
    });
}

/// A number that decodes only when it is even: what a sender can send and its receiver
/// refuses, with one type on both sides.
#[derive(Debug, PartialEq, Serialize)]
struct Even(u32);

impl<'de> Deserialize<'de> for Even {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Even, D::Error> {
        let n = u32::deserialize(d)?;
        if n % 2 == 0 {
            Ok(Even(n))
        } else {
            Err(serde::de::Error::custom(format!("{n} is odd")))
        }
    }
}

async fn mistyped(ctx: Context) -> yukicomm::Result<()> {
    child(async move {
        let report = ctx.active_channel::<String>();
        let err = ctx
            .get_channel_async::<String>("numbers")
            .await
            .expect_err("wrong type must fail");
        report.send_async(err.to_string()).await?;
        let err = ctx
            .get_channel_async::<u32>("no-such-channel")
            .await
            .expect_err("unknown must fail");
        report.send_async(err.to_string()).await?;
        // A value the main process cannot decode, then one it can.
        let passive = ctx.passive_channel::<Even>();
        passive.send_async(Even(3)).await?;
        passive.send_async(Even(4)).await?;
        let _ = report.recv_async().await;
        Ok(())
    })
    .await
}

#[test]
fn type_mismatch_and_unknown_names_are_clear_errors() {
    let (mut app, _w) = test_app!(Duration::from_secs(60));
    app.add_target("typed", mistyped);
    app.on_before_start(|ctx| async move {
        let numbers = ctx.channel::<u32>()?;
        ctx.set_channel("numbers", &numbers)?;
        Ok(())
    });
    run_main(app, |ctx| {
        // In the main process.
        match ctx.get_channel::<String>("numbers") {
            Err(RegistryError::TypeMismatch {
                name,
                expected,
                found,
            }) => {
                assert_eq!(name, "numbers");
                assert!(expected.contains("String"));
                assert_eq!(found, "u32");
            }
            other => panic!("expected a type mismatch, got {other:?}"),
        }
        let err = ctx.get_channel::<u32>("nope").unwrap_err();
        assert_eq!(
            err,
            RegistryError::Unknown {
                name: "nope".into()
            }
        );
        assert!(err.to_string().contains("'nope'"));
        assert!(matches!(
            ctx.get_channel::<u32>("bad name"),
            Err(RegistryError::InvalidName { .. })
        ));
        let other = ctx.channel::<u32>().unwrap();
        assert_eq!(
            ctx.set_channel("numbers", &other),
            Err(RegistryError::NameTaken {
                name: "numbers".into()
            })
        );

        // In a child, over its connection.
        let report = ctx.get_channel::<String>("typed-active").unwrap();
        let mismatch = report.recv_timeout(T).unwrap();
        assert!(
            mismatch.contains("numbers") && mismatch.contains("u32"),
            "{mismatch}"
        );
        let unknown = report.recv_timeout(T).unwrap();
        assert!(unknown.contains("no-such-channel"), "{unknown}");

        // A message that does not decode is an error naming the channel and the type,
        // and the next message is received normally.
        let passive = ctx.get_channel::<Even>("typed-passive").unwrap();
        match passive.recv_timeout(T) {
            Err(RecvTimeoutError::Recv(RecvError::Decode {
                channel,
                type_name,
                reason,
            })) => {
                assert_eq!(channel, "typed-passive");
                assert!(type_name.contains("Even"));
                assert!(reason.contains("3 is odd"), "{reason}");
            }
            other => panic!("expected a decode error, got {other:?}"),
        }
        assert_eq!(passive.recv_timeout(T).unwrap(), Even(4));
        report.send("bye".into()).unwrap();
    });
}

#[test]
fn one_end_receives_in_one_mode() {
    let (mut app, _w) = test_app!(Duration::from_secs(60));
    app.add_target("idle", |ctx: Context| async move {
        let _ = ctx.active_channel::<u8>().recv_async().await;
        Ok(())
    });
    run_main(app, |ctx| {
        let a = ctx.get_channel::<u8>("idle-active").unwrap();
        a.on_receive(accept_all, |_| ()).unwrap();
        let err = a.try_recv().unwrap_err();
        assert!(err.to_string().contains("idle-active"), "{err}");
        assert!(matches!(
            a.recv_timeout(Duration::from_millis(10)),
            Err(RecvTimeoutError::Recv(RecvError::ModeConflict { .. }))
        ));

        let b = ctx.get_channel::<u8>("idle-passive").unwrap();
        assert!(b.try_recv().is_err());
        let err = b.on_receive(accept_all, |_| ()).unwrap_err();
        assert!(err.to_string().contains("idle-passive"), "{err}");
        a.send(0).unwrap();
    });
}

#[derive(Serialize, Deserialize)]
struct Request {
    n: u32,
    reply: Channel<u32>,
}

async fn server(ctx: Context) -> yukicomm::Result<()> {
    child(async move {
        let requests = ctx.active_channel::<Request>();
        while let Ok(req) = requests.recv_async().await {
            req.reply.send_async(req.n * 2).await?;
        }
        Ok(())
    })
    .await
}

#[test]
fn a_request_carries_its_reply_channel() {
    let (mut app, _w) = test_app!(Duration::from_secs(60));
    app.add_target("server", server);
    run_main(app, |ctx| {
        let requests = ctx.get_channel::<Request>("server-active").unwrap();
        for n in [1, 21, 1000] {
            let (mine, theirs) = ctx.channel_pair::<u32>().unwrap();
            requests.send(Request { n, reply: theirs }).unwrap();
            assert_eq!(mine.recv_timeout(T).unwrap(), n * 2);
            // The server dropped its end after answering: the reply channel reports it.
            match mine.recv_timeout(T) {
                Err(RecvTimeoutError::Recv(RecvError::Disconnected { .. })) => {}
                other => panic!("expected disconnected, got {other:?}"),
            }
        }
    });
}

#[test]
fn select_and_close() {
    let (mut app, _w) = test_app!(Duration::from_secs(60));
    app.add_target("talker", |ctx: Context| async move {
        child(async move {
            let passive = ctx.passive_channel::<String>();
            passive.send_async("via passive".into()).await?;
            // Wait for the main process to close the channel.
            let active = ctx.active_channel::<u32>();
            let closed = matches!(active.recv_async().await, Err(RecvError::Closed { .. }));
            passive.send_async(format!("closed seen: {closed}")).await?;
            let _ = passive.recv_async().await;
            Ok(())
        })
        .await
    });
    run_main(app, |ctx| {
        let active = ctx.get_channel::<u32>("talker-active").unwrap();
        let passive = ctx.get_channel::<String>("talker-passive").unwrap();
        let got = Selector::new()
            .recv(&active, |r| format!("active {r:?}"))
            .recv(&passive, |r| format!("passive {}", r.unwrap()))
            .wait_timeout(T)
            .expect("something arrives");
        assert_eq!(got, "passive via passive");
        assert!(Selector::new()
            .recv(&active, |_| ())
            .wait_timeout(Duration::from_millis(100))
            .is_none());

        active.close();
        assert!(active.is_closed());
        assert!(matches!(active.send(1), Err(SendError::Closed { .. })));
        assert_eq!(passive.recv_timeout(T).unwrap(), "closed seen: true");
    });
}

#[test]
fn a_blocked_recv_wakes_when_the_peer_dies() {
    let (mut app, _w) = test_app!(Duration::from_secs(60));
    app.add_target("victim", |ctx: Context| async move {
        ctx.active_channel::<u32>()
            .send_async(std::process::id())
            .await?;
        std::future::pending::<()>().await;
        Ok(())
    })
    .restart(RestartPolicy::Never);
    run_main(app, |ctx| {
        let active = ctx.get_channel::<u32>("victim-active").unwrap();
        let pid = active.recv_timeout(T).unwrap();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            // SAFETY: plain syscall on our own child.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        });
        let start = Instant::now();
        match active.recv_timeout(T) {
            Err(RecvTimeoutError::Recv(RecvError::Disconnected { channel })) => {
                assert_eq!(channel, "victim-active")
            }
            other => panic!(
                "expected disconnected, got {other:?} after {:?}",
                start.elapsed()
            ),
        }
        // Sends still queue for a restarted child; receiving reports the absence at once.
        assert!(matches!(
            active.try_recv(),
            Err(yukicomm::TryRecvError::Recv(RecvError::Disconnected { .. }))
        ));
    });
}

#[test]
fn a_full_window_waits_or_fails_by_policy_and_loses_nothing() {
    let (mut app, _w) = test_app!(Duration::from_secs(60));
    app.hub_config(yukicomm::HubConfig {
        window: 4,
        ..Default::default()
    });
    app.add_target("slow", |ctx: Context| async move {
        child(async move {
            // Receive nothing until told to, then echo everything back.
            let go = ctx.passive_channel::<()>();
            go.recv_async().await?;
            let active = ctx.active_channel::<u32>();
            while let Ok(n) = active.recv_async().await {
                go.send_async(()).await?;
                let _ = n;
            }
            Ok(())
        })
        .await
    });
    run_main(app, |ctx| {
        let active = ctx.get_channel::<u32>("slow-active").unwrap();
        for n in 0..4 {
            active.send(n).unwrap();
        }
        assert!(matches!(
            active.try_send(4),
            Err(SendError::Full { value: 4, .. })
        ));
        assert!(matches!(
            active.send_timeout(4, Duration::from_millis(100)),
            Err(yukicomm::SendTimeoutError::Timeout { value: 4, .. })
        ));
        let failing = active.clone().with_full_policy(yukicomm::FullPolicy::Fail);
        assert!(matches!(failing.send(4), Err(SendError::Full { .. })));

        // Once the child receives, credit comes back and the blocked send goes through.
        let go = ctx.get_channel::<()>("slow-passive").unwrap();
        let sender = std::thread::spawn(move || {
            for n in 4..20 {
                active.send(n).unwrap();
            }
        });
        go.send(()).unwrap();
        for _ in 0..20 {
            go.recv_timeout(T).unwrap();
        }
        sender.join().unwrap();
    });
}

#[test]
fn async_select_and_iteration() {
    let (mut app, _w) = test_app!(Duration::from_secs(60));
    app.add_target("counter", |ctx: Context| async move {
        child(async move {
            let active = ctx.active_channel::<u32>();
            let passive = ctx.passive_channel::<String>();
            for n in 0..3 {
                active.send_async(n).await?;
            }
            active.close();
            passive.send_async("end".into()).await?;
            let _ = passive.recv_async().await;
            Ok(())
        })
        .await
    });
    run_main(app, |ctx| {
        let active = ctx.get_channel::<u32>("counter-active").unwrap();
        let passive = ctx.get_channel::<String>("counter-passive").unwrap();
        let got: Vec<u32> = active.iter().map(|r| r.unwrap()).collect();
        assert_eq!(got, vec![0, 1, 2], "iteration ends when the channel closes");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let text = rt.block_on(async {
            Selector::new()
                .recv(&active, |r| format!("active {r:?}"))
                .recv(&passive, |r| r.unwrap())
                .wait_async()
                .await
        });
        // The closed channel is ready with its error, as in Go: either arm may win.
        assert!(
            text == "end" || text.starts_with("active Err(Closed"),
            "{text}"
        );
    });
}

/// Several receivers in one child: two threads blocked on their own channels, a passive
/// handler, and an async receiver. Whoever reads the socket hands the others their
/// messages; nobody waits for a deadline to get theirs.
#[test]
fn several_receivers_in_one_process_each_get_their_messages() {
    let (mut app, _w) = test_app!(Duration::from_secs(90));
    app.add_target("multi", |ctx: Context| async move {
        child(async move {
            let report = ctx.active_channel::<String>();
            let a = ctx.get_channel_async::<u32>("a").await?;
            let b = ctx.get_channel_async::<u32>("b").await?;
            let c = ctx.get_channel_async::<u32>("c").await?;
            let d = ctx.get_channel_async::<u32>("d").await?;
            let echo = report.clone();
            c.on_receive(accept_all, move |n: u32| {
                echo.send(format!("c{n}")).map_err(|e| e.to_string())
            })?;
            let threads: Vec<_> = [(a, "a"), (b, "b")]
                .into_iter()
                .map(|(ch, name)| {
                    let report = report.clone();
                    std::thread::spawn(move || {
                        while let Ok(n) = ch.recv_timeout(Duration::from_secs(30)) {
                            report.send(format!("{name}{n}")).unwrap();
                        }
                    })
                })
                .collect();
            while let Ok(n) = d.recv_async().await {
                report.send_async(format!("d{n}")).await?;
            }
            for t in threads {
                let _ = t.join();
            }
            Ok(())
        })
        .await
    });
    let slot = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    let keep = slot.clone();
    app.on_before_start(move |ctx| {
        let keep = keep.clone();
        async move {
            for name in ["a", "b", "c", "d"] {
                let ch = ctx.channel::<u32>()?;
                ctx.set_channel(name, &ch)?;
                keep.lock().push(ch);
            }
            Ok(())
        }
    });
    run_main(app, move |ctx| {
        let chans: Vec<Channel<u32>> = std::mem::take(&mut *slot.lock());
        let report = ctx.get_channel::<String>("multi-active").unwrap();
        let names = ["a", "b", "c", "d"];
        // One at a time, each answered before the next: every receiver gets its turn
        // while the others wait, and each answer comes back well within the deadline.
        for round in 0..50u32 {
            for (ch, name) in chans.iter().zip(names) {
                ch.send(round).unwrap();
                // A receiver starved until its 30 s deadline would miss this one.
                assert_eq!(report.recv_timeout(T).unwrap(), format!("{name}{round}"));
            }
        }
        for ch in &chans {
            ch.close();
        }
    });
}

/// Passive handlers: several per end, sync and async filters, and a handler that fails
/// or panics changes nothing for the others or for later messages.
#[test]
fn failing_or_panicking_handlers_do_not_stop_the_others() {
    let (mut app, _w) = test_app!(Duration::from_secs(60));
    app.add_target("source", |ctx: Context| async move {
        child(async move {
            let out = ctx.active_channel::<u32>();
            for n in 0..6 {
                out.send_async(n).await?;
            }
            let _ = ctx.passive_channel::<()>().recv_async().await;
            Ok(())
        })
        .await
    });
    run_main(app, |ctx| {
        let numbers = ctx.get_channel::<u32>("source-active").unwrap();
        let (seen_tx, seen_rx) = std::sync::mpsc::channel::<String>();
        let tx = seen_tx.clone();
        // Sync filter, sync handler that panics on 1 and fails on 3.
        numbers
            .on_receive(
                |n: &u32| n % 2 == 1,
                move |n: u32| {
                    if n == 1 {
                        panic!("handler panics on purpose");
                    }
                    tx.send(format!("odd {n}")).unwrap();
                    if n == 3 {
                        return Err("handler fails on purpose");
                    }
                    Ok(())
                },
            )
            .unwrap();
        // Async filter, async handler: sees everything.
        let tx = seen_tx.clone();
        numbers
            .on_receive(
                |n: &u32| {
                    let n = *n;
                    async move { n < 100 }
                },
                move |n: u32| {
                    let tx = tx.clone();
                    async move { tx.send(format!("all {n}")).unwrap() }
                },
            )
            .unwrap();
        let mut seen: Vec<String> = (0..8).map(|_| seen_rx.recv_timeout(T).unwrap()).collect();
        seen.sort();
        // Every message reached the async handler; the odd handler ran for 3 and 5 (1
        // panicked before recording), and nothing arrived twice.
        let all: Vec<_> = seen.iter().filter(|s| s.starts_with("all")).collect();
        assert_eq!(all.len(), 6, "{seen:?}");
        let odd: Vec<_> = seen
            .iter()
            .filter(|s| s.starts_with("odd"))
            .cloned()
            .collect();
        assert_eq!(odd, vec!["odd 3", "odd 5"], "{seen:?}");
        assert!(seen_rx.recv_timeout(Duration::from_millis(200)).is_err());
        ctx.get_channel::<()>("source-passive")
            .unwrap()
            .send(())
            .unwrap();
    });
}

#[test]
fn a_child_registers_a_channel_and_everyone_can_list_it() {
    let (mut app, _w) = test_app!(Duration::from_secs(60));
    app.add_target("maker", |ctx: Context| async move {
        child(async move {
            let made = ctx.channel_async::<String>().await?;
            ctx.set_channel("made-by-child", &made)?;
            let listed = ctx.get_channels()?;
            assert!(listed.iter().any(|c| c.name == "made-by-child"));
            let control = ctx.passive_channel::<()>();
            control.send_async(()).await?;
            made.send_async("from the creator's end".into()).await?;
            let reply = made.recv_async().await?;
            ctx.active_channel::<String>().send_async(reply).await?;
            let _ = control.recv_async().await;
            Ok(())
        })
        .await
    });
    run_main(app, |ctx| {
        let control = ctx.get_channel::<()>("maker-passive").unwrap();
        control.recv_timeout(T).unwrap();
        let listed = ctx.get_channels().unwrap();
        let made = listed
            .iter()
            .find(|c| c.name == "made-by-child")
            .expect("listed");
        assert!(made.type_name.contains("String"), "{made:?}");
        assert!(listed.iter().any(|c| c.name == "maker-passive"));
        // The main process gets the far end: it receives what the creator sent.
        let far = ctx.get_channel::<String>("made-by-child").unwrap();
        assert_eq!(far.end(), yukicomm::End::B);
        assert_eq!(far.recv_timeout(T).unwrap(), "from the creator's end");
        far.send("answer".into()).unwrap();
        let report = ctx.get_channel::<String>("maker-active").unwrap();
        assert_eq!(report.recv_timeout(T).unwrap(), "answer");
        ctx.get_channel::<()>("maker-passive")
            .unwrap()
            .send(())
            .unwrap();
    });
}

/// Waits for main's word, then receives on its active channel until it is told the peer
/// has gone, and reports what it received.
async fn late_receiver(ctx: Context) -> yukicomm::Result<()> {
    child(async move {
        let control = ctx.passive_channel::<Vec<u32>>();
        control.recv_async().await?;
        let active = ctx.active_channel::<u32>();
        let mut got = Vec::new();
        loop {
            match tokio::time::timeout(T, active.recv_async()).await {
                Ok(Ok(n)) => got.push(n),
                Ok(Err(RecvError::Disconnected { .. })) => break,
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => {
                    got.push(u32::MAX); // never told that the peer went
                    break;
                }
            }
        }
        control.send_async(got).await?;
        let _ = control.recv_async().await;
        Ok(())
    })
    .await
}

/// Waits for main's word on its passive channel, then receives on its active channel
/// until `last` says a receive error ends it, and reports what it received (`u32::MAX`
/// last if no such error came in time).
async fn receive_after_word(ctx: Context, last: fn(&RecvError) -> bool) -> yukicomm::Result<()> {
    child(async move {
        let control = ctx.passive_channel::<Vec<u32>>();
        control.recv_async().await?;
        let active = ctx.active_channel::<u32>();
        let mut got = Vec::new();
        loop {
            match tokio::time::timeout(T, active.recv_async()).await {
                Ok(Ok(n)) => got.push(n),
                Ok(Err(e)) if last(&e) => break,
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => {
                    got.push(u32::MAX);
                    break;
                }
            }
        }
        control.send_async(got).await?;
        let _ = control.recv_async().await;
        Ok(())
    })
    .await
}

async fn receiver_after_close(ctx: Context) -> yukicomm::Result<()> {
    receive_after_word(ctx, |e| matches!(e, RecvError::Closed { .. })).await
}

/// Messages sent before a close arrive before the close, even when the receiver starts
/// receiving only after it.
#[test]
fn what_was_sent_before_a_close_arrives_before_it() {
    let (mut app, _w) = test_app!(Duration::from_secs(60));
    app.add_target("closing", receiver_after_close);
    run_main(app, |ctx| {
        let active = ctx.get_channel::<u32>("closing-active").unwrap();
        for n in 0..3 {
            active.send(n).unwrap();
        }
        active.close();
        let control = ctx.get_channel::<Vec<u32>>("closing-passive").unwrap();
        control.send(Vec::new()).unwrap();
        assert_eq!(control.recv_timeout(T).unwrap(), vec![0, 1, 2]);
        control.send(Vec::new()).unwrap();
    });
}

/// Messages a process sent before it let go of its end arrive before the news that it
/// went, even when the receiver starts receiving only afterwards (they waited in the
/// hub for its credit).
#[test]
fn what_a_departed_peer_sent_arrives_before_its_departure() {
    let (mut app, _w) = test_app!(Duration::from_secs(60));
    app.add_target("late", late_receiver);
    run_main(app, |ctx| {
        let active = ctx.get_channel::<u32>("late-active").unwrap();
        for n in 0..3 {
            active.send(n).unwrap();
        }
        drop(active);
        let control = ctx.get_channel::<Vec<u32>>("late-passive").unwrap();
        control.send(Vec::new()).unwrap();
        assert_eq!(control.recv_timeout(T).unwrap(), vec![0, 1, 2]);
        control.send(Vec::new()).unwrap();
    });
}

const AT_EXIT: u32 = 500;

/// Sends AT_EXIT messages without waiting, and ends at once.
async fn send_and_exit(ctx: Context) -> yukicomm::Result<()> {
    child(async move {
        let passive = ctx.passive_channel::<u32>();
        for n in 0..AT_EXIT {
            passive.send(n)?;
        }
        Ok(())
    })
    .await
}

/// What a child sent just before its target returned is not lost when it exits.
#[test]
fn what_a_child_sent_before_it_ended_is_delivered() {
    let (mut app, _w) = test_app!(Duration::from_secs(60));
    app.add_target("brief", send_and_exit);
    run_main(app, |ctx| {
        let passive = ctx.get_channel::<u32>("brief-passive").unwrap();
        for n in 0..AT_EXIT {
            assert_eq!(passive.recv_timeout(T).unwrap(), n);
        }
        assert!(matches!(
            passive.recv_timeout(T),
            Err(RecvTimeoutError::Recv(RecvError::Disconnected { .. }))
        ));
    });
}

/// Issue 8: dropping the only handle on an end got from `get_channel` counts as that
/// process leaving the channel for good, so the other end is disconnected while the
/// process lives; a selector arm on it is then always ready, yet a selector still picks
/// the other ready arms.
#[test]
fn an_always_ready_arm_does_not_starve_the_others() {
    let (mut app, _w) = test_app!(Duration::from_secs(60));
    app.on_before_start(|ctx| async move {
        let kept = ctx.channel::<u32>()?;
        ctx.set_channel("dropped-by-child", &kept)?;
        // The main process keeps end A for the whole run.
        std::mem::forget(kept);
        Ok(())
    });
    app.add_target("dropper", |ctx: Context| async move {
        child(async move {
            let taken = ctx.get_channel_async::<u32>("dropped-by-child").await?;
            drop(taken);
            let active = ctx.active_channel::<u32>();
            for n in 0..200 {
                active.send_async(n).await?;
            }
            let _ = ctx.passive_channel::<()>().recv_async().await;
            Ok(())
        })
        .await
    });
    run_main(app, |ctx| {
        let gone = ctx.get_channel::<u32>("dropped-by-child").unwrap();
        let active = ctx.get_channel::<u32>("dropper-active").unwrap();
        assert_eq!(active.recv_timeout(T).unwrap(), 0, "the child is running");
        match gone.recv_timeout(T) {
            Err(RecvTimeoutError::Recv(RecvError::Disconnected { channel })) => {
                assert_eq!(channel, "dropped-by-child")
            }
            other => panic!("expected disconnected, got {other:?}"),
        }
        // The child's messages arrive while the loop runs: go on until 50 of them were
        // chosen over the always-ready arm.
        let (mut next, mut disconnected) = (1, 0);
        let start = Instant::now();
        while next <= 50 && start.elapsed() < T {
            let got = Selector::new()
                .recv(&gone, |_| None)
                .recv(&active, |r| Some(r.unwrap()))
                .wait_timeout(T)
                .expect("the disconnected arm is always ready");
            match got {
                Some(n) => {
                    assert_eq!(n, next);
                    next += 1;
                }
                None => disconnected += 1,
            }
        }
        assert!(
            next > 50,
            "the other arm was chosen {} times in {T:?}; the always-ready arm {disconnected}",
            next - 1
        );
        assert!(
            disconnected > 0,
            "the ready disconnected arm was never chosen"
        );
        ctx.get_channel::<()>("dropper-passive")
            .unwrap()
            .send(())
            .unwrap();
    });
}

/// Issue 8: `Selector::wait_async` can be spawned on a multi-threaded runtime.
#[test]
fn a_selector_future_is_send_and_can_be_spawned() {
    fn assert_send<F: Send>(f: F) -> F {
        f
    }
    let (mut app, _w) = test_app!(Duration::from_secs(60));
    app.add_target("pinger", |ctx: Context| async move {
        child(async move {
            ctx.passive_channel::<String>()
                .send_async("ping".into())
                .await?;
            let _ = ctx.active_channel::<u32>().recv_async().await;
            Ok(())
        })
        .await
    });
    run_main(app, |ctx| {
        let active = ctx.get_channel::<u32>("pinger-active").unwrap();
        let passive = ctx.get_channel::<String>("pinger-passive").unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let task = rt.spawn(assert_send(async move {
            Selector::new()
                .recv(&active, |r| format!("active {r:?}"))
                .recv(&passive, |r| format!("passive {}", r.unwrap()))
                .wait_async()
                .await
        }));
        let got = rt
            .block_on(async { tokio::time::timeout(T, task).await })
            .expect("the selector answers in time")
            .expect("the task did not panic");
        assert_eq!(got, "passive ping");
        ctx.get_channel::<u32>("pinger-active")
            .unwrap()
            .send(1)
            .unwrap();
    });
}

/// Issue 8: a send failure turned into `yukicomm::Error` by `?` keeps what went wrong,
/// the channel's name and the value, which comes back under its own type.
#[test]
fn a_send_error_in_the_crate_error_keeps_the_value() {
    use yukicomm::{Error, SendFailureKind};
    fn is_send_sync<E: Send + Sync + 'static>() {}
    is_send_sync::<Error>();
    fn send_all(ch: &Channel<String>, words: &[&str]) -> yukicomm::Result<()> {
        for w in words {
            ch.send(w.to_string())?;
        }
        Ok(())
    }
    fn send_late(ch: &Channel<String>) -> yukicomm::Result<()> {
        ch.send_timeout("late".into(), Duration::from_millis(10))?;
        Ok(())
    }
    let (mut app, _w) = test_app!(Duration::from_secs(60));
    app.hub_config(yukicomm::HubConfig {
        window: 2,
        ..Default::default()
    });
    run_main(app, |ctx| {
        let (mine, _theirs) = ctx.channel_pair::<String>().unwrap();
        ctx.set_channel("two-words", &mine).unwrap();
        // The window of 2 fills; the third waits until its deadline.
        send_all(&mine, &["one", "two"]).unwrap();
        match send_late(&mine) {
            Err(Error::Send(f)) => {
                assert_eq!(f.kind(), SendFailureKind::Timeout);
                assert_eq!(f.channel(), "two-words");
                assert_eq!(f.into_value::<String>().unwrap(), "late");
            }
            other => panic!("expected a send failure, got {other:?}"),
        }
        mine.close();
        match send_all(&mine, &["after close"]) {
            Err(Error::Send(f)) => {
                assert_eq!(f.kind(), SendFailureKind::Closed);
                assert_eq!(f.to_string(), "channel 'two-words' is closed");
                assert!(f.value_type().contains("String"));
                // Asked for the wrong type, the failure comes back whole.
                let f = f.into_value::<u32>().unwrap_err();
                assert_eq!(f.into_value::<String>().unwrap(), "after close");
            }
            other => panic!("expected a send failure, got {other:?}"),
        }
    });
}

/// Tries every operation on a child's own channel through a handle of the wrong type,
/// and reports each error.
async fn own_mistyped(ctx: Context) -> yukicomm::Result<()> {
    child(async move {
        let report = ctx.passive_channel::<String>();
        report.send_async("ready".into()).await?;
        // The main process has looked `NAME-active` up as String by now.
        report.recv_async().await?;
        let wrong = ctx.active_channel::<u64>();
        let mut seen = vec![
            match wrong.send_async(7).await {
                Err(e @ SendError::TypeMismatch { value: 7, .. }) => e.to_string(),
                other => format!("send: {other:?}"),
            },
            match wrong.recv_timeout(Duration::from_millis(10)) {
                Err(RecvTimeoutError::Recv(e @ RecvError::TypeMismatch { .. })) => e.to_string(),
                other => format!("recv: {other:?}"),
            },
            match wrong.on_receive(accept_all, |_| ()) {
                Err(e @ yukicomm::OnReceiveError::TypeMismatch { .. }) => e.to_string(),
                other => format!("on_receive: {other:?}"),
            },
        ];
        // The same for the passive channel, whose type this process already knows.
        seen.push(match ctx.passive_channel::<u32>().try_send(1) {
            Err(e @ SendError::TypeMismatch { .. }) => e.to_string(),
            other => format!("passive send: {other:?}"),
        });
        for line in seen {
            report.send_async(line).await?;
        }
        // The right type works, and nothing went out through the wrong one.
        ctx.active_channel::<String>()
            .send_async("right type".into())
            .await?;
        let _ = report.recv_async().await;
        Ok(())
    })
    .await
}

/// Issue 8: `active_channel::<T>()` and `passive_channel::<T>()` check `T` against the
/// type the channel was first used with, as `get_channel` does.
#[test]
fn a_childs_own_channels_check_their_type() {
    let (mut app, _w) = test_app!(Duration::from_secs(60));
    app.add_target("own", own_mistyped);
    run_main(app, |ctx| {
        let report = ctx.get_channel::<String>("own-passive").unwrap();
        assert_eq!(report.recv_timeout(T).unwrap(), "ready");
        let active = ctx.get_channel::<String>("own-active").unwrap();
        report.send("go".into()).unwrap();
        let string = std::any::type_name::<String>();
        let lines: Vec<String> = (0..4).map(|_| report.recv_timeout(T).unwrap()).collect();
        let expected = format!("channel 'own-active' carries {string}, not u64");
        assert_eq!(lines[..3], [expected.clone(), expected.clone(), expected]);
        assert_eq!(
            lines[3],
            format!("channel 'own-passive' carries {string}, not u32")
        );
        assert_eq!(active.recv_timeout(T).unwrap(), "right type");
        assert!(
            active.try_recv().is_err(),
            "the mistyped handle sent something"
        );
        report.send("bye".into()).unwrap();
    });
}
