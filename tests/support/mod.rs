//! Shared helpers for the end-to-end tests: a watchdog, and an `App` whose children are
//! this test binary re-executed to run one test.
//!
//! A test starts with `let (mut app, _w) = test_app!(limit);` (or `test_watchdog!` when
//! it has no app): the test's name, which the watchdog reports and the children need to
//! run the same test, comes from the test function itself.
#![allow(dead_code)]

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use yukicomm::{App, MainContext};

/// Fails the whole test binary if the test is still running after `limit`, so that a
/// bug is a failure, never a hung CI job.
pub struct Watchdog {
    done: Arc<AtomicBool>,
}

pub fn watchdog(name: &'static str, limit: Duration) -> Watchdog {
    let done = Arc::new(AtomicBool::new(false));
    let flag = done.clone();
    std::thread::spawn(move || {
        let start = std::time::Instant::now();
        while start.elapsed() < limit {
            if flag.load(Ordering::Acquire) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("watchdog: test '{name}' still running after {limit:?}; failing");
        std::process::exit(101);
    });
    Watchdog { done }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Release);
    }
}

/// The name the test harness gives the test in whose body this expands: its path in
/// this test binary, such as `duplex_both_ways` or `close::main_child`. Children are this
/// binary re-executed with that name, so a test writes its own name nowhere.
#[macro_export]
macro_rules! test_name {
    () => {{
        fn f() {}
        $crate::support::test_name_of(::std::any::type_name_of_val(&f))
    }};
}

/// The one way a test starts: `let (mut app, _w) = test_app!(limit);` gives a watchdog
/// that fails the binary after `limit`, and an [`App`] whose children run this test (see
/// [`start`]).
#[macro_export]
macro_rules! test_app {
    ($limit:expr) => {
        $crate::support::start($crate::test_name!(), $limit)
    };
}

/// For a test without an [`App`] of its own: `let _w = test_watchdog!(limit);`.
#[macro_export]
macro_rules! test_watchdog {
    ($limit:expr) => {
        $crate::support::watchdog($crate::test_name!(), $limit)
    };
}

/// The test's name from the path of a function `f` declared in its body (perhaps in a
/// closure or async block there): `binary::path::to::test::{{closure}}::f` becomes
/// `path::to::test`.
pub fn test_name_of(path: &'static str) -> &'static str {
    let mut inner = path
        .strip_suffix("::f")
        .and_then(|p| p.split_once("::"))
        .map(|(_binary, test)| test)
        .unwrap_or_else(|| panic!("'{path}' is not the path of a test's `f`"));
    while let Some(outer) = inner.strip_suffix("::{{closure}}") {
        inner = outer;
    }
    assert!(!inner.contains('{'), "no test name in '{path}'");
    inner
}

/// A watchdog for the test `name` and an app whose children run that test; the
/// watchdog is the second element so that `let (app, _w) = ...` keeps it to the end.
pub fn start(name: &'static str, limit: Duration) -> (App, Watchdog) {
    let w = watchdog(name, limit);
    (app(name), w)
}

/// An app whose re-executed children run only the test `name` of this binary (where
/// `App::run` dispatches to the child's target instead of running the test).
pub fn app(name: &str) -> App {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
    let mut app = App::new();
    app.exec_args([
        "--exact",
        name,
        "--nocapture",
        "--test-threads=1",
        "--quiet",
    ]);
    app
}

/// Runs `app` with `body` as the main process's work (in a blocking thread, so it can
/// use blocking calls), shuts down when it returns, and re-raises its panic, if any.
pub fn run_main<F>(mut app: App, body: F)
where
    F: FnOnce(MainContext) + Send + 'static,
{
    let body = Arc::new(parking_lot::Mutex::new(Some(body)));
    let outcome = Arc::new(parking_lot::Mutex::new(None));
    let out = outcome.clone();
    app.on_after_start(move |ctx| {
        let body = body.lock().take();
        let out = out.clone();
        async move {
            let Some(body) = body else { return Ok(()) };
            let c = ctx.clone();
            let r = tokio::task::spawn_blocking(move || {
                std::panic::catch_unwind(AssertUnwindSafe(|| body(c)))
            })
            .await;
            *out.lock() = Some(match r {
                Ok(r) => r,
                Err(e) => Err(Box::new(format!("test body task failed: {e}"))
                    as Box<dyn std::any::Any + Send>),
            });
            ctx.shutdown();
            Ok(())
        }
    });
    app.run().expect("the app runs");
    let result = outcome.lock().take();
    match result {
        Some(Ok(())) => {}
        Some(Err(panic)) => std::panic::resume_unwind(panic),
        None => panic!("the test body never ran"),
    }
}

/// Runs an async child body, turning a panic into an error exit.
pub async fn child<F: Future<Output = yukicomm::Result<()>>>(f: F) -> yukicomm::Result<()> {
    match AssertUnwindSafe(f).catch_unwind().await {
        Ok(r) => r,
        Err(_) => Err(yukicomm::Error::Other("child panicked".into())),
    }
}

/// Whether a process is gone (or a zombie nobody reaped).
pub fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
    }
}

/// Polls `cond` every 20 ms until it holds or `limit` passes.
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// The path of an example binary, which `cargo test` builds next to the tests.
pub fn example(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>/deps");
    let path = dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: `cargo test` builds the examples",
        path.display()
    );
    path
}

/// The socket directories (`yukicomm-*`) in the places a hub makes them.
fn socket_dirs() -> Vec<std::path::PathBuf> {
    [std::env::temp_dir()]
        .into_iter()
        .chain(std::env::var_os("XDG_RUNTIME_DIR").map(std::path::PathBuf::from))
        .filter_map(|parent| std::fs::read_dir(parent).ok())
        .flat_map(|entries| entries.flatten())
        .filter(|e| e.file_name().to_string_lossy().starts_with("yukicomm-"))
        .map(|e| e.path())
        .collect()
}

/// Runs an example to its end with `args`; returns its standard output, after checking
/// that it exited 0 and removed its socket directory.
pub fn run_example(name: &str, args: &[&str]) -> String {
    // A directory left by an earlier process that had the same pid is not this one's.
    let before = socket_dirs();
    let child = std::process::Command::new(example(name))
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the example runs");
    let prefix = format!("yukicomm-{}-", child.id());
    let out = child.wait_with_output().expect("the example runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{name} exited with {}: {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for dir in socket_dirs() {
        let ours = dir
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(&prefix));
        assert!(
            !ours || before.contains(&dir),
            "{name} left {} behind",
            dir.display()
        );
    }
    stdout
}

/// A directory of its own for a test, removed when dropped.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    /// A new, empty directory whose name starts with `prefix`.
    pub fn new(prefix: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "yk-test-{prefix}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("creates a test directory");
        TempDir(path)
    }

    /// Its path.
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
