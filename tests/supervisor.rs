//! Supervision with real processes: restarts on request from either side, restart
//! policies and intensity, hooks, stop, and children never outliving the main process.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use support::{child, eventually, example, process_gone, run_main};
use yukicomm::{Context, RecvTimeoutError, RestartPolicy};

const T: Duration = Duration::from_secs(20);

#[derive(Debug, Serialize, Deserialize, PartialEq)]
enum Up {
    Started(u32),
    Pong(u32),
}

#[derive(Debug, Serialize, Deserialize)]
enum Down {
    Ping,
    RestartYourself,
}

/// Announces its pid, answers pings, restarts itself on request.
async fn worker(ctx: Context) -> yukicomm::Result<()> {
    child(async move {
        let pid = std::process::id();
        let up = ctx.passive_channel::<Up>();
        up.send_async(Up::Started(pid)).await?;
        let down = ctx.active_channel::<Down>();
        while let Ok(cmd) = down.recv_async().await {
            match cmd {
                Down::Ping => up.send_async(Up::Pong(pid)).await?,
                Down::RestartYourself => ctx.request_restart()?,
            }
        }
        Ok(())
    })
    .await
}

fn started(up: &yukicomm::Channel<Up>) -> u32 {
    match up.recv_timeout(T).unwrap() {
        Up::Started(pid) => pid,
        other => panic!("expected a start, got {other:?}"),
    }
}

#[test]
fn restart_on_request_from_main_keeps_channels_working() {
    let (mut app, _w) = test_app!(Duration::from_secs(60));
    app.add_target("w", worker);
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let l1 = log.clone();
    app.on_before_process_restart(move |_, name| {
        l1.lock().push(format!("before restart {name}"));
        async { Ok(()) }
    });
    let l2 = log.clone();
    app.on_after_restart(move |_, name| {
        l2.lock().push(format!("after restart {name}"));
        async { Ok(()) }
    });
    run_main(app, move |ctx| {
        let up = ctx.get_channel::<Up>("w-passive").unwrap();
        let down = ctx.get_channel::<Down>("w-active").unwrap();
        let first = started(&up);
        ctx.restart_process("w").unwrap();
        let second = started(&up);
        assert_ne!(first, second, "a restart makes a new process");
        assert!(process_gone(first as i32), "the old process was reaped");
        down.send(Down::Ping).unwrap();
        assert_eq!(up.recv_timeout(T).unwrap(), Up::Pong(second));
        assert_eq!(*log.lock(), vec!["before restart w", "after restart w"]);
        assert!(ctx
            .restart_process("nobody")
            .unwrap_err()
            .to_string()
            .contains("nobody"));
    });
}

#[test]
fn restart_on_request_from_the_child() {
    let (mut app, _w) = test_app!(Duration::from_secs(60));
    app.add_target("w", worker);
    run_main(app, |ctx| {
        let up = ctx.get_channel::<Up>("w-passive").unwrap();
        let down = ctx.get_channel::<Down>("w-active").unwrap();
        let mut pids = vec![started(&up)];
        for _ in 0..2 {
            down.send(Down::RestartYourself).unwrap();
            pids.push(started(&up));
        }
        pids.dedup();
        assert_eq!(pids.len(), 3, "each request gives a new process: {pids:?}");
        down.send(Down::Ping).unwrap();
        assert_eq!(up.recv_timeout(T).unwrap(), Up::Pong(pids[2]));
    });
}

#[test]
fn a_killed_child_is_restarted_by_policy() {
    let (mut app, _w) = test_app!(Duration::from_secs(60));
    app.add_target("w", worker)
        .restart(RestartPolicy::OnFailure)
        .backoff(Duration::from_millis(10), Duration::from_millis(50));
    run_main(app, |ctx| {
        let up = ctx.get_channel::<Up>("w-passive").unwrap();
        let down = ctx.get_channel::<Down>("w-active").unwrap();
        let first = started(&up);
        // SAFETY: plain syscall on our own child.
        unsafe { libc::kill(first as i32, libc::SIGKILL) };
        let second = started(&up);
        assert_ne!(first, second);
        down.send(Down::Ping).unwrap();
        assert_eq!(up.recv_timeout(T).unwrap(), Up::Pong(second));
    });
}

#[test]
fn the_intensity_limit_stops_a_crash_loop() {
    let (mut app, _w) = test_app!(Duration::from_secs(60));
    app.add_target("crasher", |ctx: Context| async move {
        ctx.passive_channel::<Up>()
            .send_async(Up::Started(std::process::id()))
            .await?;
        // Make sure the message left, then die as a crash would.
        ctx.flush(T)?;
        std::process::exit(3);
    })
    .restart(RestartPolicy::Always)
    .backoff(Duration::from_millis(5), Duration::from_millis(20))
    .intensity(3, Duration::from_secs(60));
    run_main(app, |ctx| {
        let up = ctx.get_channel::<Up>("crasher-passive").unwrap();
        let mut pids = Vec::new();
        for _ in 0..4 {
            pids.push(started(&up));
        }
        pids.dedup();
        assert_eq!(pids.len(), 4, "the first run and three restarts");
        // No fifth start: the child is marked failed.
        match up.recv_timeout(Duration::from_secs(2)) {
            Err(RecvTimeoutError::Recv(yukicomm::RecvError::Disconnected { .. }))
            | Err(RecvTimeoutError::Timeout { .. }) => {}
            other => panic!("the crash loop went on: {other:?}"),
        }
        // A request still restarts a failed child.
        ctx.restart_process("crasher").unwrap();
        started(&up);
    });
}

#[test]
fn hooks_run_in_order_with_names_and_stop_stops() {
    let (mut app, _w) = test_app!(Duration::from_secs(60));
    app.add_target("a", worker);
    app.add_target("b", worker).restart(RestartPolicy::Always);
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let l = log.clone();
    app.on_before_start(move |_| {
        l.lock().push("before start".into());
        async { Ok(()) }
    });
    let l = log.clone();
    app.on_before_process_shutdown(move |_, name| {
        l.lock().push(format!("before shutdown {name}"));
        async { Ok(()) }
    });
    let l = log.clone();
    app.on_after_shutdown(move |_| {
        l.lock().push("after shutdown".into());
        async { Ok(()) }
    });
    let l = log.clone();
    run_main(app, move |ctx| {
        let up_b = ctx.get_channel::<Up>("b-passive").unwrap();
        let pid_b = started(&up_b);
        ctx.stop_process("b").unwrap();
        assert!(eventually(T, || process_gone(pid_b as i32)), "b stopped");
        // Even with policy Always, a stopped child stays stopped.
        assert!(up_b.recv_timeout(Duration::from_millis(500)).is_err());
        l.lock().push("body done".into());
    });
    assert_eq!(
        *log.lock(),
        vec![
            "before start",
            "before shutdown b",
            "body done",
            "before shutdown a",
            "after shutdown"
        ]
    );
}

/// Starts the quickstart example without a round limit and returns it with its child's
/// pid, read from its log.
fn start_quickstart() -> (
    std::process::Child,
    i32,
    BufReader<std::process::ChildStdout>,
) {
    let mut main = Command::new(example("quickstart"))
        .args(["--interval-ms", "100"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(main.stdout.take().unwrap());
    let mut line = String::new();
    let pid = loop {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "quickstart ended early"
        );
        if let Some(rest) = line.split("pid=").nth(1) {
            break rest.trim().parse::<i32>().unwrap();
        }
    };
    // Wait until the child is talking, so that it is fully up.
    loop {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "quickstart ended early"
        );
        if line.contains("Active receive") {
            break;
        }
    }
    (main, pid, out)
}

#[test]
fn killing_the_main_process_with_sigkill_leaves_no_child() {
    let _w = test_watchdog!(Duration::from_secs(60));
    let (mut main, child_pid, _out) = start_quickstart();
    assert!(!process_gone(child_pid));
    main.kill().unwrap();
    main.wait().unwrap();
    assert!(
        eventually(Duration::from_secs(2), || process_gone(child_pid)),
        "child {child_pid} outlived its main process"
    );
}

#[test]
fn sigterm_shuts_down_in_order() {
    let _w = test_watchdog!(Duration::from_secs(60));
    let (mut main, child_pid, mut out) = start_quickstart();
    // SAFETY: plain syscall on our own child.
    unsafe { libc::kill(main.id() as i32, libc::SIGTERM) };
    let status = main.wait().unwrap();
    assert!(status.success(), "{status}");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    // The child either is stopped, or ends by itself first because the main process
    // dropped its channel handles while shutting down.
    assert!(
        rest.contains("stopped") || rest.contains("exited"),
        "the child is stopped in order: {rest}"
    );
    assert!(process_gone(child_pid));
}

/// A child started with `add_command`: this test binary, told by an environment
/// variable to act as a plain program that joins with `yukicomm::connect()`.
#[test]
fn a_command_child_joins_with_connect() {
    if std::env::var_os("ACT_AS_COMMAND_CHILD").is_some() {
        let ctx = yukicomm::connect().expect("joins the hub");
        let active = ctx.active_channel::<String>();
        for text in active.iter() {
            let text = text.unwrap();
            active.send(format!("{} says {text}", ctx.name())).unwrap();
        }
        std::process::exit(0);
    }
    let (mut app, _w) = test_app!(Duration::from_secs(60));
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", test_name!(), "--nocapture", "--test-threads=1"])
        .env("ACT_AS_COMMAND_CHILD", "1");
    app.add_command("cmd", cmd);
    run_main(app, |ctx| {
        let active = ctx.get_channel::<String>("cmd-active").unwrap();
        active.send("hi".into()).unwrap();
        assert_eq!(active.recv_timeout(T).unwrap(), "cmd says hi");
    });
}

#[test]
fn a_child_ignoring_sigterm_is_killed_after_its_stop_timeout() {
    let (mut app, _w) = test_app!(Duration::from_secs(60));
    app.add_target("stubborn", |ctx: Context| async move {
        // SAFETY: setting a signal disposition to "ignore" is always sound.
        unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
        ctx.passive_channel::<Up>()
            .send_async(Up::Started(std::process::id()))
            .await?;
        std::future::pending::<()>().await;
        Ok(())
    })
    .stop_timeout(Duration::from_millis(300));
    app.add_target("other", worker);
    run_main(app, |ctx| {
        let up = ctx.get_channel::<Up>("stubborn-passive").unwrap();
        let pid = started(&up);
        let other = ctx.get_channel::<Up>("other-passive").unwrap();
        let other_pid = started(&other);
        ctx.stop_process("stubborn").unwrap();
        assert!(
            eventually(Duration::from_secs(10), || process_gone(pid as i32)),
            "killed and reaped"
        );
        ctx.restart_all().unwrap();
        // The stopped child starts again, and so does the other one.
        assert_ne!(started(&up), pid);
        assert_ne!(started(&other), other_pid);
    });
}
