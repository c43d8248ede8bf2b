//! Shared-memory connections whose readers never sleep (`YUKICOMM_BUSY_POLL=1`, set here
//! for the main process, so for the hub's side of every connection and for the children
//! that inherit it) and whose readers never watch before sleeping (`YUKICOMM_SPIN_US=0`,
//! for one child): messages small and large go both ways in order, the store answers,
//! and a child that dies is reported, not waited for.
//!
//! One test in its own binary: the variable is set in this process's environment.
#![cfg(target_os = "linux")]

mod support;

use std::process::Command;
use std::time::Duration;

use support::run_main;
use yukicomm::{RecvError, RecvTimeoutError, RestartPolicy};

const T: Duration = Duration::from_secs(30);
/// Set in the re-executed test binary: play the echo child.
const ROLE: &str = "BUSY_POLL_TEST_ROLE";

/// The echo child: echoes strings on its active channel, adds each to a counter, and
/// exits (without a word) when told `die`.
fn echo_child() {
    let ctx = yukicomm::connect().expect("joins");
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let active = ctx.active_channel::<String>();
    let passive = ctx.passive_channel::<bool>();
    passive.send(maps.contains("yukicomm-ring")).unwrap();
    let store = ctx.store();
    while let Ok(s) = active.recv() {
        if s == "die" {
            std::process::exit(0);
        }
        store.incr("echoed", 1).unwrap();
        active.send(s).unwrap();
    }
}

#[test]
fn busy_polling_and_no_watching_keep_every_promise() {
    if std::env::var_os(ROLE).is_some() {
        return echo_child();
    }
    // Set before the hub or any child starts, in a binary with this one test.
    std::env::set_var(yukicomm::wire::ENV_BUSY_POLL, "1");
    let (mut app, _w) = test_app!(Duration::from_secs(120));
    for (name, spin) in [("busy", None), ("nowatch", Some("0"))] {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "--exact",
            "busy_polling_and_no_watching_keep_every_promise",
            "--nocapture",
        ])
        .env(ROLE, "1");
        if let Some(us) = spin {
            cmd.env(yukicomm::wire::ENV_BUSY_POLL, "0")
                .env(yukicomm::wire::ENV_SPIN_US, us);
        }
        app.add_command(name, cmd).restart(RestartPolicy::Never);
    }
    run_main(app, |ctx| {
        let store = ctx.store();
        let big = "y".repeat(3 << 20);
        let mut expected = 0;
        for name in ["busy", "nowatch"] {
            let on_rings = ctx.get_channel::<bool>(&format!("{name}-passive")).unwrap();
            assert!(
                on_rings.recv_timeout(T).unwrap(),
                "{name} is in shared memory"
            );
            let echo = ctx
                .get_channel::<String>(&format!("{name}-active"))
                .unwrap();
            for i in 0..1000 {
                echo.send(format!("{name} {i}")).unwrap();
            }
            echo.send(big.clone()).unwrap();
            for i in 0..1000 {
                assert_eq!(echo.recv_timeout(T).unwrap(), format!("{name} {i}"));
            }
            assert_eq!(
                echo.recv_timeout(T).unwrap(),
                big,
                "{name}: the large message"
            );
            expected += 1001;
            assert_eq!(store.get::<i64>("echoed").unwrap(), Some(expected));

            echo.send("die".into()).unwrap();
            match echo.recv_timeout(T) {
                Err(RecvTimeoutError::Recv(RecvError::Disconnected { .. })) => {}
                other => panic!("{name}: a dead child is reported, got {other:?}"),
            }
        }
    });
}
