//! Services and calls between real processes: main to child, child to main, child to
//! child; many calls in flight; deadlines and cancellation; a server killed mid-call;
//! no server; a pool of servers; restart continuity; the service's own error; a
//! panicking handler; a reply too large; an unknown method.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use support::{child, eventually, process_gone, run_main};
use yukicomm::service::{CallErrorKind, ServeOptions, ServiceClient, WhenFull};
use yukicomm::{shared_memory, Context, Node};

const T: Duration = Duration::from_secs(20);
const LIMIT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MathError {
    DivideByZero,
}

impl std::fmt::Display for MathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("divide by zero")
    }
}

/// A service with a method for each behaviour under test.
#[yukicomm::service]
pub trait Lab {
    /// Returns `text` as it came.
    async fn echo(&self, text: String) -> String;
    /// `a / b`, or the service's own error.
    async fn divide(&self, a: i64, b: i64) -> Result<i64, MathError>;
    /// The serving process's id.
    async fn whoami(&self) -> u32;
    /// Sleeps `ms`, then returns the pid; if it is cancelled first, sets the store key
    /// `tag` to "cancelled" (and to the deadline it saw, in ms from now, under
    /// `tag.deadline`).
    async fn sleep(&self, ms: u64, tag: String) -> u32;
    /// Panics.
    async fn boom(&self) -> u32;
    /// A reply of `len` bytes.
    async fn big(&self, len: u64) -> Vec<u8>;
}

struct LabImpl;

/// Sets the store key on drop unless disarmed: sees a handler's future dropped.
struct CancelGuard {
    tag: String,
    done: bool,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.done {
            let tag = self.tag.clone();
            // The store call waits for the hub: not on a runtime thread.
            std::thread::spawn(move || {
                let _ = shared_memory().set(&tag, &"cancelled".to_string());
            });
        }
    }
}

#[yukicomm::service]
impl Lab for LabImpl {
    async fn echo(&self, text: String) -> String {
        text
    }

    async fn divide(&self, a: i64, b: i64) -> Result<i64, MathError> {
        if b == 0 {
            Err(MathError::DivideByZero)
        } else {
            Ok(a / b)
        }
    }

    async fn whoami(&self) -> u32 {
        std::process::id()
    }

    async fn sleep(&self, ms: u64, tag: String) -> u32 {
        let mut guard = CancelGuard {
            tag: tag.clone(),
            done: false,
        };
        if let Some(call) = yukicomm::service::current_call() {
            let left = call.deadline.saturating_duration_since(Instant::now());
            let _ =
                shared_memory().set_nowait(&format!("{tag}.deadline"), &(left.as_millis() as u64));
        }
        tokio::time::sleep(Duration::from_millis(ms)).await;
        guard.done = true;
        std::process::id()
    }

    async fn boom(&self) -> u32 {
        panic!("boom on purpose")
    }

    async fn big(&self, len: u64) -> Vec<u8> {
        vec![0u8; len as usize]
    }
}

/// A child that serves `lab` until it is stopped.
async fn server(ctx: Context) -> yukicomm::Result<()> {
    child(async move {
        ctx.serve("lab", LabImpl)?;
        std::future::pending::<()>().await;
        Ok(())
    })
    .await
}

/// A child that calls `lab-main` (served by the main process) and `lab` (served by
/// another child), and reports on its passive channel.
async fn caller(ctx: Context) -> yukicomm::Result<()> {
    child(async move {
        let report = ctx.passive_channel::<String>();
        let main = LabClient::new(&ctx, "lab-main").waiting_for_server();
        let other = LabClient::new(&ctx, "lab").waiting_for_server();
        let a = main.echo("to main".into()).await?;
        let b = other.echo("to child".into()).await?;
        let c = other.blocking().divide(7, 0);
        let c = match c {
            Err(e) => format!("{:?}", e.into_service_error()),
            Ok(v) => format!("unexpected {v}"),
        };
        report.send_async(format!("{a}|{b}|{c}")).await?;
        std::future::pending::<()>().await;
        Ok(())
    })
    .await
}

/// Waits until the hub has read the end of the killed server's connection. The process
/// is gone before that: until then a call still goes to it and ends with `ServerGone`;
/// afterwards a call waits for the restart (here it times out).
fn hub_knows_lab_is_down(node: &Node) {
    let probe = LabClient::new(node, "lab").with_timeout(Duration::from_millis(100));
    assert!(eventually(T, || matches!(
        probe.blocking().whoami().map_err(|e| e.kind().clone()),
        Err(CallErrorKind::Timeout(_))
    )));
}

fn lab(node: &Node) -> LabClient {
    LabClient::new(node, "lab")
        .waiting_for_server()
        .with_timeout(T)
}

#[test]
fn calls_go_main_to_child_child_to_main_and_child_to_child() {
    let (mut app, _w) = test_app!(LIMIT);
    app.add_target("server", server);
    app.add_target("caller", caller);
    run_main(app, |ctx| {
        ctx.serve("lab-main", LabServer::new(LabImpl)).unwrap();
        let lab = lab(&ctx);
        // Blocking and async, from the main process to a child.
        assert_eq!(lab.blocking().echo("hi".into()).unwrap(), "hi");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(lab.divide(9, 3)).unwrap(), 3);
        let pid = lab.blocking().whoami().unwrap();
        assert_ne!(pid, std::process::id());
        // A child calls the main process and another child.
        let report = ctx.get_channel::<String>("caller-passive").unwrap();
        assert_eq!(
            report.recv_timeout(T).unwrap(),
            "to main|to child|Some(DivideByZero)"
        );
    });
}

#[test]
fn ten_thousand_concurrent_calls_each_get_their_own_reply() {
    let (mut app, _w) = test_app!(LIMIT);
    app.add_target("server", server);
    run_main(app, |ctx| {
        let lab = lab(&ctx).with_timeout(Duration::from_secs(60));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // The server is up once it answers.
        lab.blocking().whoami().unwrap();
        let calls: Vec<_> = (0..10_000).map(|i| lab.echo(format!("call {i}"))).collect();
        let replies = rt.block_on(futures::future::join_all(calls));
        for (i, r) in replies.into_iter().enumerate() {
            assert_eq!(r.unwrap(), format!("call {i}"));
        }
    });
}

#[test]
fn a_passed_deadline_times_out_and_cancels_the_handler() {
    let (mut app, _w) = test_app!(LIMIT);
    app.add_target("server", server);
    run_main(app, |ctx| {
        let store = ctx.store();
        lab(&ctx).blocking().whoami().unwrap();
        let short = lab(&ctx).with_timeout(Duration::from_millis(300));
        let start = Instant::now();
        let err = short
            .blocking()
            .sleep(10_000, "deadline".into())
            .unwrap_err();
        let took = start.elapsed();
        assert!(err.is_timeout(), "{err}");
        assert_eq!((err.service(), err.method()), ("lab", "sleep"));
        assert!(took < Duration::from_secs(3), "timed out after {took:?}");
        assert!(
            eventually(T, || store.get::<String>("deadline").unwrap().is_some()),
            "the handler was not cancelled"
        );
        // The server saw the deadline: at most the caller's 300 ms.
        let seen: u64 = store.get("deadline.deadline").unwrap().unwrap();
        assert!(seen <= 300, "the handler saw {seen} ms left");
        // The async form times out too.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let start = Instant::now();
        let err = rt
            .block_on(short.sleep(10_000, "deadline-async".into()))
            .unwrap_err();
        assert!(err.is_timeout(), "{err}");
        assert!(start.elapsed() < Duration::from_secs(3));
        assert!(eventually(T, || store
            .get::<String>("deadline-async")
            .unwrap()
            .is_some()));
    });
}

#[test]
fn a_dropped_call_is_cancelled_at_the_server() {
    let (mut app, _w) = test_app!(LIMIT);
    app.add_target("server", server);
    run_main(app, |ctx| {
        let store = ctx.store();
        let lab = lab(&ctx);
        lab.blocking().whoami().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let call = lab.sleep(10_000, "dropped".into());
            // Let it reach the server, then give up on it.
            let _ = tokio::time::timeout(Duration::from_millis(300), call).await;
        });
        assert!(
            eventually(T, || store.get::<String>("dropped").unwrap().is_some()),
            "the handler was not cancelled"
        );
    });
}

#[test]
fn a_server_killed_mid_call_gives_server_gone_within_two_seconds() {
    let (mut app, _w) = test_app!(LIMIT);
    app.add_target("server", server);
    run_main(app, |ctx| {
        let lab = lab(&ctx);
        let pid = lab.blocking().whoami().unwrap();
        let waiting = {
            let lab = lab.clone();
            std::thread::spawn(move || {
                let r = lab.blocking().sleep(15_000, "killed".into());
                (r, Instant::now())
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        let killed_at = Instant::now();
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let (result, at) = waiting.join().unwrap();
        let err = result.unwrap_err();
        assert!(matches!(err.kind(), CallErrorKind::ServerGone(_)), "{err}");
        assert!(
            at - killed_at < Duration::from_secs(2),
            "server gone after {:?}",
            at - killed_at
        );
    });
}

#[test]
fn no_server_fails_at_once() {
    let (app, _w) = test_app!(LIMIT);
    run_main(app, |ctx| {
        let start = Instant::now();
        let err = LabClient::new(&ctx, "nobody")
            .blocking()
            .echo("x".into())
            .unwrap_err();
        assert!(matches!(err.kind(), CallErrorKind::NoServer(_)), "{err}");
        assert!(err.to_string().contains("nobody"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(1));
    });
}

/// A child that serves `lab` as one of a pool: one call at a time.
async fn pooled(ctx: Context) -> yukicomm::Result<()> {
    child(async move {
        ctx.serve_with(
            "lab",
            LabImpl,
            ServeOptions {
                max_in_flight: 1,
                when_full: WhenFull::Wait,
            },
        )?;
        std::future::pending::<()>().await;
        Ok(())
    })
    .await
}

#[test]
fn two_servers_share_the_load() {
    let (mut app, _w) = test_app!(LIMIT);
    app.add_target("p1", pooled);
    app.add_target("p2", pooled);
    run_main(app, |ctx| {
        let lab = lab(&ctx);
        // Both serve once both answer an echo while the other sleeps.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        assert!(eventually(T, || {
            let pids = rt.block_on(futures::future::join_all(
                (0..2).map(|i| lab.sleep(200, format!("warm{i}"))),
            ));
            let pids: Vec<u32> = pids.into_iter().filter_map(Result::ok).collect();
            pids.len() == 2 && pids[0] != pids[1]
        }));
        let pids = rt.block_on(futures::future::join_all(
            (0..8).map(|i| lab.sleep(100, format!("load{i}"))),
        ));
        let pids: Vec<u32> = pids.into_iter().map(Result::unwrap).collect();
        let first = pids[0];
        let on_first = pids.iter().filter(|&&p| p == first).count();
        assert_eq!(
            on_first, 4,
            "8 calls at 1 in progress each: 4 and 4: {pids:?}"
        );
    });
}

#[test]
fn a_call_during_a_restart_waits_for_the_new_process() {
    let (mut app, _w) = test_app!(LIMIT);
    app.add_target("server", server)
        .backoff(Duration::from_secs(1), Duration::from_secs(1));
    run_main(app, |ctx| {
        let lab = lab(&ctx);
        let old = lab.blocking().whoami().unwrap();
        unsafe { libc::kill(old as i32, libc::SIGKILL) };
        assert!(eventually(T, || process_gone(old as i32)));
        hub_knows_lab_is_down(&ctx);
        // Not waiting for a server: the name is kept for the child being restarted.
        let plain = LabClient::new(&ctx, "lab").with_timeout(T);
        let new = plain.blocking().whoami().unwrap();
        assert_ne!(new, old);
    });
}

#[test]
fn a_stopped_server_fails_waiting_calls_with_no_server() {
    let (mut app, _w) = test_app!(LIMIT);
    app.add_target("server", server)
        .backoff(Duration::from_secs(5), Duration::from_secs(5));
    run_main(app, |ctx| {
        let lab = lab(&ctx);
        let old = lab.blocking().whoami().unwrap();
        unsafe { libc::kill(old as i32, libc::SIGKILL) };
        assert!(eventually(T, || process_gone(old as i32)));
        hub_knows_lab_is_down(&ctx);
        let plain = LabClient::new(&ctx, "lab").with_timeout(T);
        let waiting = std::thread::spawn(move || plain.blocking().whoami());
        std::thread::sleep(Duration::from_millis(300));
        ctx.stop_process("server").unwrap();
        let err = waiting.join().unwrap().unwrap_err();
        assert!(matches!(err.kind(), CallErrorKind::NoServer(_)), "{err}");
    });
}

#[test]
fn the_service_error_a_panic_a_large_reply_and_an_unknown_method() {
    let (mut app, _w) = test_app!(LIMIT);
    app.add_target("server", server);
    run_main(app, |ctx| {
        let lab = lab(&ctx).blocking();
        assert_eq!(
            lab.divide(1, 0).unwrap_err().into_service_error(),
            Some(MathError::DivideByZero)
        );
        let err = lab.boom().unwrap_err();
        match err.kind() {
            CallErrorKind::Panicked(m) => assert!(m.contains("boom on purpose"), "{m}"),
            other => panic!("expected a panic, got {other:?}"),
        }
        // The server goes on serving.
        assert_eq!(lab.echo("still here".into()).unwrap(), "still here");
        let err = lab.big(20 << 20).unwrap_err();
        assert!(matches!(err.kind(), CallErrorKind::TooLarge(_)), "{err}");
        assert_eq!(lab.big(1000).unwrap().len(), 1000);
        let raw = ServiceClient::new(&ctx, "lab");
        let err = raw
            .call_blocking::<_, u32, yukicomm::service::NoError>("translate", &["x"])
            .unwrap_err();
        assert!(
            matches!(err.kind(), CallErrorKind::UnknownMethod(_)),
            "{err}"
        );
        // Arguments of the wrong types.
        let err = raw
            .call_blocking::<_, String, yukicomm::service::NoError>("echo", &[1, 2, 3])
            .unwrap_err();
        assert!(matches!(err.kind(), CallErrorKind::BadRequest(_)), "{err}");
    });
}

#[test]
fn serve_fn_and_caller_without_the_macro() {
    let (mut app, _w) = test_app!(LIMIT);
    app.add_target("doubler", |ctx: Context| async move {
        child(async move {
            ctx.serve_fn("double", |n: u64| async move { n * 2 })?;
            std::future::pending::<()>().await;
            Ok(())
        })
        .await
    });
    run_main(app, |ctx| {
        let double = ctx
            .caller::<u64, u64>("double")
            .waiting_for_server()
            .with_timeout(T);
        assert_eq!(double.call(21).unwrap(), 42);
        assert_eq!(double.call_timeout(5, T).unwrap(), 10);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(double.call_async(4)).unwrap(), 8);
        // Main serves too, and a late reply is never given to another call.
        let slow = Arc::new(AtomicBool::new(true));
        let s = slow.clone();
        ctx.serve_fn("maybe-slow", move |n: u32| {
            let slow = s.swap(false, Ordering::SeqCst);
            async move {
                if slow {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                n
            }
        })
        .unwrap();
        let maybe = ctx.caller::<u32, u32>("maybe-slow");
        let err = maybe
            .call_timeout(1, Duration::from_millis(100))
            .unwrap_err();
        assert!(err.is_timeout());
        assert_eq!(maybe.call(2).unwrap(), 2);
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(maybe.call(3).unwrap(), 3);
    });
}
