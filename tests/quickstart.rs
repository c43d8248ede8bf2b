//! The documented example, run as a newcomer would: `quickstart --rounds N`.

use std::process::Command;
use std::time::Duration;

mod support;

#[test]
fn quickstart_prints_both_receives_and_exits_cleanly() {
    let _w = support::watchdog(
        "quickstart_prints_both_receives_and_exits_cleanly",
        Duration::from_secs(60),
    );
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join("quickstart");
    assert!(
        path.exists(),
        "{} is missing: `cargo test` builds the examples",
        path.display()
    );
    let out = Command::new(path)
        .args(["--rounds", "3", "--interval-ms", "100"])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exit {}: {stdout}", out.status);
    let passive = stdout
        .lines()
        .filter(|l| {
            l.starts_with("[nonebot]") && l.contains("Passive receive: I am main process passive")
        })
        .count();
    let active = stdout
        .lines()
        .filter(|l| {
            l.starts_with("[nonebot]") && l.contains("Active receive: I am main process active")
        })
        .count();
    assert_eq!((passive, active), (3, 3), "{stdout}");
}

#[test]
fn restart_example_shows_a_new_pid_each_time() {
    let _w = support::watchdog(
        "restart_example_shows_a_new_pid_each_time",
        Duration::from_secs(60),
    );
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join("restart");
    assert!(
        path.exists(),
        "{} is missing: `cargo test` builds the examples",
        path.display()
    );
    let out = Command::new(path)
        .args(["--restarts", "2"])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exit {}: {stdout}", out.status);
    let line = stdout
        .lines()
        .find(|l| l.contains("pids: ["))
        .expect("the pid summary");
    let list = line.split("pids: [").nth(1).unwrap().trim_end_matches(']');
    let mut pids: Vec<u32> = list.split(", ").map(|p| p.parse().unwrap()).collect();
    assert_eq!(pids.len(), 3, "{line}");
    pids.sort();
    pids.dedup();
    assert_eq!(pids.len(), 3, "each start is a new process: {line}");
}
