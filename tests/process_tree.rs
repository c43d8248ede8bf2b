//! Issue 8: no orphans. A child's descendants in its process group end with it: when it
//! is stopped, restarted, when it crashes, and when the main process is killed with
//! SIGKILL. Each child here is a shell that starts two grandchildren (one of them
//! ignoring SIGTERM) and writes its own pid and theirs to a file the test reads.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{app, eventually, process_gone, run_main};
use yukicomm::RestartPolicy;

const T: Duration = Duration::from_secs(20);

/// A fresh, empty directory for one test's files.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("yukicomm-tree-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A shell that starts two `sleep`s in its process group (the first ignores SIGTERM),
/// writes "SHELL A B" to `file`, then runs `then`.
fn family(file: &Path, then: &str) -> Command {
    let file = file.display();
    let script = format!(
        "trap '' TERM; sleep 1000 & a=$!; trap - TERM; sleep 1000 & b=$!; \
         echo \"$$ $a $b\" > '{file}.tmp' && mv '{file}.tmp' '{file}'; {then}"
    );
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(script);
    cmd
}

/// Waits for `file` and returns the pids in it.
fn read_pids(file: &Path) -> Vec<i32> {
    let mut pids = Vec::new();
    assert!(
        eventually(T, || {
            pids = std::fs::read_to_string(file)
                .map(|t| {
                    t.split_whitespace()
                        .filter_map(|p| p.parse().ok())
                        .collect()
                })
                .unwrap_or_default();
            pids.len() == 3
        }),
        "the child wrote its family's pids to {}",
        file.display()
    );
    pids
}

fn all_gone(pids: &[i32]) -> bool {
    pids.iter().all(|p| process_gone(*p))
}

/// Kills what a failed test left behind.
fn cleanup(pids: &[i32]) {
    for p in pids {
        // SAFETY: plain syscall; at worst it hits nothing.
        unsafe { libc::kill(*p, libc::SIGKILL) };
    }
}

#[test]
fn grandchildren_end_when_their_child_is_stopped() {
    let (mut app, _w) = test_app!(Duration::from_secs(60));
    let dir = scratch("stop");
    let file = dir.join("pids");
    app.add_command("family", family(&file, "wait"))
        .stop_timeout(Duration::from_millis(500));
    run_main(app, move |ctx| {
        let pids = read_pids(&file);
        assert!(pids.iter().all(|p| !process_gone(*p)), "all started");
        ctx.stop_process("family").unwrap();
        let gone = eventually(T, || all_gone(&pids));
        cleanup(&pids);
        assert!(
            gone,
            "the child {pids:?} and its grandchildren are gone after a stop"
        );
    });
}

#[test]
fn grandchildren_end_when_their_child_is_restarted() {
    let (mut app, _w) = test_app!(Duration::from_secs(60));
    let dir = scratch("restart");
    let file = dir.join("pids");
    app.add_command("family", family(&file, "wait"))
        .stop_timeout(Duration::from_millis(500));
    run_main(app, move |ctx| {
        let old = read_pids(&file);
        std::fs::remove_file(&file).unwrap();
        ctx.restart_process("family").unwrap();
        let new = read_pids(&file);
        let gone = eventually(T, || all_gone(&old));
        cleanup(&old);
        if !gone {
            // The shutdown would not end the new family either.
            cleanup(&new);
        }
        assert!(gone, "the old family {old:?} is gone after a restart");
        assert!(
            new.iter().all(|p| !process_gone(*p) && !old.contains(p)),
            "the new family {new:?} runs"
        );
    });
}

#[test]
fn grandchildren_end_when_their_child_crashes() {
    let (mut app, _w) = test_app!(Duration::from_secs(60));
    let dir = scratch("crash");
    let file = dir.join("pids");
    app.add_command("family", family(&file, "kill -9 $$"))
        .restart(RestartPolicy::Never)
        .stop_timeout(Duration::from_millis(500));
    run_main(app, move |_ctx| {
        let pids = read_pids(&file);
        let gone = eventually(T, || all_gone(&pids));
        cleanup(&pids);
        assert!(
            gone,
            "the grandchildren of the crashed child {pids:?} are gone"
        );
    });
}

/// The main process is this test binary, re-executed: it supervises one family until
/// the test kills it with SIGKILL.
#[test]
fn grandchildren_end_when_the_main_process_is_killed() {
    if let Some(file) = std::env::var_os("ACT_AS_MAIN_PROCESS") {
        let mut app = app(test_name!());
        app.add_command("family", family(Path::new(&file), "wait"));
        app.run().unwrap();
        std::process::exit(0);
    }
    let _w = test_watchdog!(Duration::from_secs(60));
    let dir = scratch("main");
    let file = dir.join("pids");
    let mut main = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            test_name!(),
            "--nocapture",
            "--test-threads=1",
            "--quiet",
        ])
        .env("ACT_AS_MAIN_PROCESS", &file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pids = read_pids(&file);
    main.kill().unwrap();
    main.wait().unwrap();
    let gone = eventually(T, || all_gone(&pids));
    cleanup(&pids);
    assert!(
        gone,
        "the child and its grandchildren {pids:?} are gone after SIGKILL of the main process"
    );
}
