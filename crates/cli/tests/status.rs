//! End-to-end tests of the `yukicomm` command against a real running program (the
//! `observed` example): `status` and `status --json`, `top` under a pseudo-terminal,
//! `monitor`, `restart` and `stop`, the Prometheus endpoint over HTTP, a process of
//! another user refused, and the errors when no program, or several, are found.
//!
//! Each test runs the example with a fresh `XDG_RUNTIME_DIR`, so the command finds
//! that program and no other. Every wait has a deadline and a watchdog ends a test that
//! hangs.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Generous: the machine may be loaded by parallel builds.
const WAIT: Duration = Duration::from_secs(60);

/// Fails the whole test binary if a test runs longer than `limit`.
struct Watchdog(Arc<AtomicBool>);

fn watchdog(name: &'static str, limit: Duration) -> Watchdog {
    let done = Arc::new(AtomicBool::new(false));
    let flag = done.clone();
    std::thread::spawn(move || {
        let start = Instant::now();
        while start.elapsed() < limit {
            if flag.load(Ordering::Acquire) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("watchdog: test '{name}' still running after {limit:?}; failing");
        std::process::exit(101);
    });
    Watchdog(done)
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// The `yukicomm` binary.
fn cli() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_yukicomm"))
}

/// The `observed` example, which `cargo test` builds beside the binary.
fn example() -> PathBuf {
    let p = cli()
        .parent()
        .expect("the binary's directory")
        .join("examples/observed");
    assert!(
        p.exists(),
        "{} is missing: it is built by `cargo test -p yukicomm-cli` (examples are built for tests)",
        p.display()
    );
    p
}

/// A fresh private directory, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        use std::os::unix::fs::DirBuilderExt;
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "yukicomm-cli-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&p)
            .expect("make a temporary directory");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running example, stopped with SIGTERM (then SIGKILL) when dropped.
struct Program {
    child: Child,
    log: PathBuf,
}

impl Program {
    fn start(runtime: &Path, envs: &[(&str, &str)], args: &[&str]) -> Program {
        let log = runtime.join(format!("observed-{}.log", rand_tag()));
        let out = std::fs::File::create(&log).expect("a log file");
        let err = out.try_clone().expect("a log file");
        let child = Command::new(example())
            .args(args)
            .env("XDG_RUNTIME_DIR", runtime)
            .env("RUST_LOG", "warn")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start the example");
        Program { child, log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: kill only sends a signal to our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rand_tag() -> u32 {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Runs `cmd` to its end, within [`WAIT`].
fn finish(mut cmd: Command) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run yukicomm");
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let o = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out.read_to_end(&mut b);
        b
    });
    let e = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err.read_to_end(&mut b);
        b
    });
    let end = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for yukicomm") {
            break s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!(
                "yukicomm {:?} did not finish within {WAIT:?}",
                cmd.get_args()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: o.join().unwrap(),
        stderr: e.join().unwrap(),
    }
}

/// `yukicomm ARGS` with `runtime` as its runtime directory.
fn yukicomm(runtime: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(cli());
    cmd.args(args).env("XDG_RUNTIME_DIR", runtime);
    finish(cmd)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asks `status --json` until `ready` holds for the report, within [`WAIT`].
fn status_until(
    p: &Program,
    runtime: &Path,
    what: &str,
    ready: impl Fn(&Value) -> bool,
) -> (Value, Output) {
    let end = Instant::now() + WAIT;
    loop {
        let out = yukicomm(runtime, &["status", "--json"]);
        if let Ok(v) = serde_json::from_slice::<Value>(&out.stdout) {
            if ready(&v) {
                return (v, out);
            }
            if Instant::now() > end {
                panic!(
                    "{what}: not seen within {WAIT:?}; last report:\n{v:#}\nprogram's log:\n{}",
                    p.log()
                );
            }
        } else if Instant::now() > end {
            panic!(
                "{what}: no report within {WAIT:?}: {}\nprogram's log:\n{}",
                text(&out.stderr),
                p.log()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn process<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["processes"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("no process '{name}' in {v:#}"))
}

#[test]
fn status_json_shows_a_crashing_childs_restarts_and_last_exit() {
    let _w = watchdog("status_json", Duration::from_secs(180));
    let rt = TempDir::new("status");
    let p = Program::start(&rt.0, &[], &[]);
    // The flaky child fails with status 3 soon after each start, and is given up on
    // after three restarts: a state that does not change any more.
    let (v, out) = status_until(&p, &rt.0, "flaky failed after 3 restarts", |v| {
        let flaky = process(v, "flaky");
        let steady = process(v, "steady");
        flaky["state"] == "failed" && steady["traffic"]["msgs_in"].as_u64().unwrap_or(0) > 0
    });
    let flaky = process(&v, "flaky");
    assert_eq!(flaky["restarts"], 3, "{v:#}");
    assert_eq!(flaky["last_exit"]["code"], 3, "{v:#}");
    assert!(flaky["last_exit"]["signal"].is_null(), "{v:#}");
    assert!(
        flaky["last_exit"]["reason"]
            .as_str()
            .unwrap()
            .contains("restarted too often"),
        "{v:#}"
    );
    assert!(flaky["pid"].is_null());
    let steady = process(&v, "steady");
    assert_eq!(steady["state"], "running");
    assert!(steady["pid"].as_u64().unwrap() > 0);
    assert_eq!(steady["connected"], true);
    assert_eq!(v["main"]["pid"], p.pid());
    if cfg!(target_os = "linux") {
        assert!(steady["rss_bytes"].as_u64().unwrap() > 0, "{v:#}");
    }
    assert!(v["channels"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["name"] == "steady-active" && c["type_name"] == "u64"));
    assert!(v["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["pattern"] == "orders.*" && s["process"] == "main"));
    // A failed child: not healthy, so status says so with its exit code.
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));

    // The table says the same.
    let table = yukicomm(&rt.0, &["status"]);
    assert_eq!(table.status.code(), Some(1));
    let t = text(&table.stdout);
    assert!(t.starts_with(&format!("main {}", p.pid())), "{t}");
    let flaky_line = t.lines().find(|l| l.starts_with("flaky")).expect(&t);
    assert!(
        flaky_line.contains("failed") && flaky_line.contains("status 3"),
        "{t}"
    );
    let steady_line = t.lines().find(|l| l.starts_with("steady")).expect(&t);
    assert!(steady_line.contains("running"), "{t}");
}

#[test]
fn a_process_joined_from_another_machine_is_listed_as_remote() {
    let _w = watchdog("remote_status", Duration::from_secs(180));
    let rt = TempDir::new("remote");
    let state = rt.0.join("state");
    let p = Program::start(
        &rt.0,
        &[("XDG_STATE_HOME", state.to_str().expect("a UTF-8 path"))],
        &["--remote"],
    );
    let (v, _) = status_until(&p, &rt.0, "far joined", |v| {
        v["processes"].as_array().is_some_and(|a| {
            a.iter()
                .any(|p| p["name"] == "far" && p["state"] == "remote" && p["connected"] == true)
        })
    });
    let far = process(&v, "far");
    assert!(far["pid"].is_null(), "{v:#}");
    let table = text(&yukicomm(&rt.0, &["status"]).stdout);
    let line = table.lines().find(|l| l.starts_with("far")).expect(&table);
    assert!(line.contains("remote"), "{table}");
}

#[test]
fn restart_and_stop_act_through_the_supervisor() {
    let _w = watchdog("restart_and_stop", Duration::from_secs(180));
    let rt = TempDir::new("control");
    let p = Program::start(&rt.0, &[], &[]);
    let (v, _) = status_until(&p, &rt.0, "steady running", |v| {
        process(v, "steady")["state"] == "running"
    });
    let first = process(&v, "steady")["pid"].as_u64().unwrap();
    let out = yukicomm(&rt.0, &["restart", "steady"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (v, _) = status_until(&p, &rt.0, "steady restarted", |v| {
        let s = process(v, "steady");
        s["state"] == "running" && s["pid"].as_u64() != Some(first)
    });
    let s = process(&v, "steady");
    assert_eq!(s["restarts"], 1, "{v:#}");
    assert_eq!(s["last_exit"]["reason"], "restarted on request", "{v:#}");

    let out = yukicomm(&rt.0, &["stop", "steady"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    status_until(&p, &rt.0, "steady stopped", |v| {
        process(v, "steady")["state"] == "stopped"
    });

    let out = yukicomm(&rt.0, &["restart", "nobody"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no child process named 'nobody'"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn monitor_taps_only_where_allowed() {
    let _w = watchdog("monitor", Duration::from_secs(180));
    let rt = TempDir::new("monitor");
    let p = Program::start(&rt.0, &[("YUKICOMM_MONITOR", "1")], &[]);
    status_until(&p, &rt.0, "steady running", |v| {
        process(v, "steady")["state"] == "running"
    });
    let out = yukicomm(
        &rt.0,
        &["monitor", "orders.*", "--count", "3", "--seconds", "50"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let t = text(&out.stdout);
    assert_eq!(
        t.lines()
            .filter(|l| l.starts_with("main -> topic orders.new"))
            .count(),
        3,
        "{t}"
    );
    let out = yukicomm(
        &rt.0,
        &["monitor", "steady-*", "--count", "2", "--seconds", "50"],
    );
    let t = text(&out.stdout);
    assert!(t.lines().any(|l| l.contains("steady-")), "{t}");
    assert!(!t.contains("orders"), "only what matches the pattern: {t}");
    drop(p);

    let rt = TempDir::new("monitor-off");
    let p = Program::start(&rt.0, &[("YUKICOMM_MONITOR", "0")], &[]);
    status_until(&p, &rt.0, "steady running", |v| {
        process(v, "steady")["state"] == "running"
    });
    let out = yukicomm(&rt.0, &["monitor", "*", "--count", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("does not allow monitoring"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn prometheus_endpoint_is_scraped_over_http() {
    let _w = watchdog("prometheus", Duration::from_secs(180));
    let rt = TempDir::new("metrics");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let p = Program::start(&rt.0, &[], &["--metrics", &addr]);
    let end = Instant::now() + WAIT;
    let body = loop {
        let got = std::net::TcpStream::connect(&addr).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
            let mut b = String::new();
            s.read_to_string(&mut b)?;
            Ok(b)
        });
        match got {
            // Given up on after its third restart fails.
            Ok(b) if b.contains("yukicomm_process_state{process=\"flaky\",state=\"failed\"} 1") => {
                break b
            }
            _ if Instant::now() > end => {
                panic!(
                    "no metrics with flaky failed within {WAIT:?}: {got:?}\n{}",
                    p.log()
                )
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    assert!(body.contains("application/openmetrics-text"), "{body}");
    assert!(
        body.contains("yukicomm_process_restarts_total{process=\"flaky\"} 3"),
        "{body}"
    );
    assert!(
        body.contains("yukicomm_process_up{process=\"steady\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("yukicomm_messages_sent_total{process=\"main\"}"),
        "{body}"
    );
    assert!(
        body.contains("yukicomm_channel_backlog_messages{channel=\"steady-active\",end=\"A\"}"),
        "{body}"
    );
    assert!(body.contains("yukicomm_store_keys"), "{body}");
    assert!(body.trim_end().ends_with("# EOF"), "{body}");
}

#[test]
fn no_program_several_programs_and_unknown_pid_are_clear_errors() {
    let _w = watchdog("errors", Duration::from_secs(180));
    let rt = TempDir::new("errors");
    let out = yukicomm(&rt.0, &["status"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no running yukicomm program found for this user"),
        "{}",
        text(&out.stderr)
    );
    let a = Program::start(&rt.0, &[], &[]);
    let b = Program::start(&rt.0, &[], &[]);
    let end = Instant::now() + WAIT;
    let err = loop {
        let out = yukicomm(&rt.0, &["status"]);
        let err = text(&out.stderr);
        if err.contains("several yukicomm programs are running") {
            assert_eq!(out.status.code(), Some(2));
            break err;
        }
        assert!(Instant::now() < end, "two programs not seen: {err}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(err.contains(&format!("pid {}", a.pid())), "{err}");
    assert!(err.contains(&format!("pid {}", b.pid())), "{err}");
    // --pid chooses one.
    let out = yukicomm(&rt.0, &["--pid", &a.pid().to_string(), "status", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("a report");
    assert_eq!(v["main"]["pid"], a.pid());
    // A pid that runs no program.
    let out = yukicomm(&rt.0, &["--pid", "1", "status"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("with pid 1"),
        "{}",
        text(&out.stderr)
    );
    // A program killed with SIGKILL leaves an entry, which is found stale and ignored.
    let mut b = b;
    let _ = b.child.kill();
    let _ = b.child.wait();
    let out = yukicomm(&rt.0, &["status", "--json"]);
    let v: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", text(&out.stderr)));
    assert_eq!(v["main"]["pid"], a.pid());
}

#[test]
fn a_process_of_another_user_is_refused() {
    let _w = watchdog("other_user", Duration::from_secs(180));
    if rustix::process::geteuid().as_raw() != 0 {
        // Only root can run a process as another user here; CI runs as root.
        eprintln!(
            "a_process_of_another_user_is_refused: needs root to run as another user; not run"
        );
        return;
    }
    const NOBODY: u32 = 65534;
    let rt = TempDir::new("uid");
    use std::os::unix::fs::PermissionsExt;
    // The runtime directory may be entered by anyone; the hub's own is private.
    std::fs::set_permissions(&rt.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let p = Program::start(&rt.0, &[], &[]);
    status_until(&p, &rt.0, "steady running", |v| {
        process(v, "steady")["state"] == "running"
    });
    let entry = yukicomm_hub::discovery::entries_in(&rt.0.join("yukicomm"))
        .expect("read the entries")
        .into_iter()
        .next()
        .expect("the program's entry");
    // The binary where the other user can run it.
    let shared = std::env::temp_dir().join(format!("yukicomm-cli-uid-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&shared);
    std::fs::create_dir(&shared).expect("a shared directory");
    let _cleanup = TempDir(shared.clone());
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = shared.join("yukicomm");
    std::fs::copy(cli(), &bin).expect("copy the binary");
    let as_nobody = |extra: &[&str]| {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(&bin);
        cmd.args(["--socket", entry.socket.to_str().unwrap()])
            .args(extra)
            .env("XDG_RUNTIME_DIR", &shared)
            .current_dir(&shared)
            .uid(NOBODY)
            .gid(NOBODY);
        finish(cmd)
    };
    // The socket's directory is private: the kernel refuses.
    let out = as_nobody(&["status"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(
        err.contains("permission refused") && err.contains("cannot be reached by user 65534"),
        "{err}"
    );
    // With the directory opened up, the hub itself checks the peer's credentials and
    // closes the connection without answering.
    let dir = entry.socket.parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&entry.socket, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = as_nobody(&["status"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(
        err.contains("refused the connection") && err.contains("user 65534"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    let out = as_nobody(&["stop", "steady"]);
    assert_eq!(out.status.code(), Some(2));
    // Nothing was stopped.
    let (v, _) = status_until(&p, &rt.0, "steady still running", |_| true);
    assert_eq!(process(&v, "steady")["state"], "running");
}

/// `yukicomm top` in a pseudo-terminal: it draws the processes, and quits on `q` with
/// the terminal given back (alternate screen left).
#[test]
fn top_shows_processes_and_quits_on_q() {
    let _w = watchdog("top", Duration::from_secs(180));
    let rt = TempDir::new("top");
    let p = Program::start(&rt.0, &[], &[]);
    status_until(&p, &rt.0, "steady running", |v| {
        process(v, "steady")["state"] == "running"
    });

    let size = nix::pty::Winsize {
        ws_row: 40,
        ws_col: 160,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size), None).expect("a pseudo-terminal");
    let slave = std::fs::File::from(pty.slave);
    let mut cmd = Command::new(cli());
    cmd.arg("top")
        .args(["--interval-ms", "300"])
        .env("XDG_RUNTIME_DIR", &rt.0)
        .env("TERM", "xterm-256color")
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave.try_clone().unwrap());
    // SAFETY: the closure runs in the forked child before exec and only calls the
    // async-signal-safe setsid and ioctl.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The terminal on standard input becomes the controlling terminal.
            if libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("run yukicomm top");
    drop(slave);
    drop(cmd);
    let master = std::fs::File::from(pty.master);
    let mut reader = master.try_clone().unwrap();
    let screen = Arc::new(Mutex::new(Vec::<u8>::new()));
    let sink = screen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        // Ends with an error once the terminal's last holder is gone.
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let seen = |s: &str| text(&screen.lock().unwrap()).contains(s);
    let end = Instant::now() + WAIT;
    while !(seen("steady") && seen("flaky") && seen("running") && seen("RESTARTS")) {
        if Instant::now() > end || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            panic!(
                "top did not show the processes: {:?}",
                text(&screen.lock().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (&master).write_all(b"q").expect("type q");
    let end = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("top did not quit on q");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "top exited with {status}");
    // Give the reader a moment for the last bytes, then check the terminal was restored.
    let end = Instant::now() + Duration::from_secs(10);
    while !seen("\x1b[?1049l") && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(seen("\x1b[?1049h"), "the alternate screen was entered");
    assert!(seen("\x1b[?1049l"), "the alternate screen was left");
}
