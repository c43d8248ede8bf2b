//! What a sender's own code cannot break, and what a slow or absent receiver cannot make
//! the main process hold (issue 8): a value whose `Serialize` panics or fails leaves
//! the connection as it was; a slow `Serialize` in the main process does not stall the
//! hub's routing; a channel's queue is bounded in bytes as well as in messages.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize, Serializer};
use support::{child, run_main};
use yukicomm::{Context, Payload, RestartPolicy, SendError};

const T: Duration = Duration::from_secs(20);

/// A value whose `Serialize` panics, half way through, when it is `Bomb(true)`.
#[derive(Debug, Deserialize)]
struct Bomb(bool, String);

impl Serialize for Bomb {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTupleStruct;
        let mut t = s.serialize_tuple_struct("Bomb", 2)?;
        t.serialize_field(&self.0)?;
        if self.0 {
            panic!("a user's Serialize panics");
        }
        t.serialize_field(&self.1)?;
        t.end()
    }
}

/// Sends a panicking value, then a good one; reports what the send said.
async fn bomber(ctx: Context) -> yukicomm::Result<()> {
    child(async move {
        let passive = ctx.passive_channel::<Bomb>();
        let err = match passive.send(Bomb(true, "lost".into())) {
            Err(SendError::Encode { reason, .. }) => reason,
            other => format!("unexpected: {other:?}"),
        };
        passive.send(Bomb(false, err))?;
        // Echo what the main process sends, so that it sees the connection still works.
        let active = ctx.active_channel::<Bomb>();
        while let Ok(b) = active.recv_async().await {
            passive.send_async(b).await?;
        }
        Ok(())
    })
    .await
}

#[test]
fn a_panicking_serialize_leaves_nothing_half_sent_in_child_or_main() {
    let (mut app, _w) = test_app!(Duration::from_secs(60));
    app.add_target("bomber", bomber)
        .restart(RestartPolicy::Never);
    run_main(app, |ctx| {
        let passive = ctx.get_channel::<Bomb>("bomber-passive").unwrap();
        // The child's panicking send became an error, and its next message arrived
        // whole: nothing of the broken one went ahead of it.
        let Bomb(ok, reason) = passive.recv_timeout(T).unwrap();
        assert!(!ok);
        assert!(
            reason.contains("panicked") && reason.contains("a user's Serialize panics"),
            "{reason}"
        );

        // The same in the main process, towards the child.
        let active = ctx.get_channel::<Bomb>("bomber-active").unwrap();
        match active.send(Bomb(true, "lost".into())) {
            Err(SendError::Encode { channel, value, .. }) => {
                assert_eq!(channel, "bomber-active");
                assert!(value.0, "the value is handed back");
            }
            other => panic!("expected an encode error, got {other:?}"),
        }
        for i in 0..3 {
            active.send(Bomb(false, format!("after {i}"))).unwrap();
        }
        for i in 0..3 {
            let Bomb(_, text) = passive.recv_timeout(T).unwrap();
            assert_eq!(text, format!("after {i}"));
        }
    });
}

/// Released by the main process once it saw routing go on.
static RELEASE: AtomicBool = AtomicBool::new(false);
/// Set while a `Slow` value is being encoded.
static ENCODING: AtomicBool = AtomicBool::new(false);

/// A value whose `Serialize` waits until [`RELEASE`] is set (at most 15 s).
#[derive(Debug, Deserialize)]
struct Slow(u32);

impl Serialize for Slow {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ENCODING.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(15);
        while !RELEASE.load(Ordering::SeqCst) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        s.serialize_newtype_struct("Slow", &self.0)
    }
}

#[test]
fn a_slow_serialize_in_the_main_process_does_not_stall_routing() {
    let (mut app, _w) = test_app!(Duration::from_secs(60));
    app.add_target("ticker", |ctx: Context| async move {
        child(async move {
            // Receiving at its active end (so that the main process's messages go
            // straight to this child), and ticking on the passive one.
            let got = ctx.passive_channel::<u32>();
            let tick = got.clone();
            ctx.active_channel::<Slow>().on_receive(
                |_: &Slow| true,
                move |s: Slow| {
                    let _ = got.send(1_000_000 + s.0);
                    async {}
                },
            )?;
            for i in 0.. {
                tick.send_async(i).await?;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(())
        })
        .await
    });
    run_main(app, |ctx| {
        let ticks = ctx.get_channel::<u32>("ticker-passive").unwrap();
        let active = ctx.get_channel::<Slow>("ticker-active").unwrap();
        ticks.recv_timeout(T).unwrap();
        let sender = std::thread::spawn(move || active.send(Slow(7)).map_err(|e| e.to_string()));
        while !ENCODING.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        // While the main process encodes, the child's ticks are still routed to it.
        let routed = (0..3).all(|_| {
            ticks
                .recv_timeout(Duration::from_secs(5))
                .is_ok_and(|n| n < 1_000_000)
        });
        RELEASE.store(true, Ordering::SeqCst);
        sender.join().unwrap().unwrap();
        assert!(
            routed,
            "routing stalled while the main process encoded a value"
        );
        // And the slow value arrived once encoded.
        let seen = (0..500).any(|_| ticks.recv_timeout(T).unwrap() == 1_000_007);
        assert!(seen);
    });
}

/// The main process's resident memory, in bytes. Other tests of this binary run in the
/// same process meanwhile, so bounds on its growth are loose; the counts are exact.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

const MIB: usize = 1 << 20;

#[test]
fn a_child_waiting_for_its_restart_queues_at_most_its_byte_window() {
    let (mut app, _w) = test_app!(Duration::from_secs(120));
    let window_bytes = 8 * MIB as u64;
    app.hub_config(yukicomm::HubConfig {
        window_bytes,
        ..Default::default()
    });
    app.add_target("late", |ctx: Context| async move {
        child(async move {
            let passive = ctx.passive_channel::<u32>();
            passive.send_async(std::process::id()).await?;
            // The first process dies at once; the next receives and counts.
            let restarted: Option<bool> = ctx.store().get_async("late:restarted").await?;
            if restarted != Some(true) {
                ctx.flush(T)?;
                std::process::exit(3);
            }
            let active = ctx.active_channel::<Payload>();
            let mut n = 0;
            while let Ok(p) = active.recv_async().await {
                assert_eq!(p.len(), MIB);
                n += 1;
                passive.send_async(n).await?;
            }
            Ok(())
        })
        .await
    })
    .restart(RestartPolicy::Always)
    .backoff(Duration::from_secs(600), Duration::from_secs(600));
    run_main(app, move |ctx| {
        let passive = ctx.get_channel::<u32>("late-passive").unwrap();
        let active = ctx
            .get_channel::<Payload>("late-active")
            .unwrap()
            .with_full_policy(yukicomm::FullPolicy::Fail);
        let first = passive.recv_timeout(T).unwrap();
        assert!(support::eventually(T, || support::process_gone(
            first as i32
        )));

        // The child now waits ten minutes for its restart: its messages queue in the
        // main process, until the window in bytes is used up.
        let before = rss();
        let body = Payload::from(vec![7u8; MIB]);
        let mut sent = 0u32;
        loop {
            match active.send(body.clone()) {
                Ok(()) => sent += 1,
                Err(SendError::Full { .. }) => break,
                Err(e) => panic!("{e}"),
            }
            assert!(sent <= 4096, "the window in bytes never filled");
        }
        let grown = rss().saturating_sub(before);
        // A message is sent while fewer bytes than the window are in flight.
        assert_eq!(sent as u64, window_bytes / MIB as u64);
        assert!(
            grown < 4 * window_bytes,
            "the main process grew by {grown} bytes for {sent} queued messages"
        );

        // Nothing queued is lost: the next process gets every message.
        ctx.store().set("late:restarted", &true).unwrap();
        ctx.restart_process("late").unwrap();
        let next = passive.recv_timeout(T).unwrap();
        assert_ne!(next, first);
        for n in 1..=sent {
            assert_eq!(passive.recv_timeout(T).unwrap(), n);
        }
    });
}

#[test]
fn a_stopped_child_cannot_make_the_main_process_hold_more_than_a_byte_window() {
    let (mut app, _w) = test_app!(Duration::from_secs(120));
    app.add_target("stopped", |ctx: Context| async move {
        child(async move {
            ctx.passive_channel::<u32>()
                .send_async(std::process::id())
                .await?;
            std::future::pending::<()>().await;
            Ok(())
        })
        .await
    })
    .restart(RestartPolicy::Never);
    run_main(app, move |ctx| {
        let passive = ctx.get_channel::<u32>("stopped-passive").unwrap();
        let active = ctx.get_channel::<Payload>("stopped-active").unwrap();
        let pid = passive.recv_timeout(T).unwrap();
        ctx.stop_process("stopped").unwrap();
        assert!(support::eventually(T, || support::process_gone(pid as i32)));

        // With the default windows (4096 messages, 32 MiB), 4 MiB messages: the window
        // in bytes ends the flood long before the one in messages.
        let before = rss();
        let body = Payload::from(vec![7u8; 4 * MIB]);
        let mut sent = 0u64;
        let refusal = loop {
            match active.try_send(body.clone()) {
                Ok(()) => sent += 1,
                Err(e) => break e,
            }
            assert!(sent <= 64, "the window in bytes never filled");
        };
        assert!(
            matches!(refusal, SendError::Disconnected { .. }),
            "{refusal:?}"
        );
        let window_bytes = yukicomm::HubConfig::default().window_bytes;
        assert_eq!(sent, window_bytes / (4 * MIB as u64));
        let grown = rss().saturating_sub(before);
        assert!(
            grown < 4 * window_bytes,
            "the main process grew by {grown} bytes for {sent} messages to a stopped child"
        );
    });
}
