//! Shared helpers for the end-to-end tests: a watchdog, and an `App` whose children are
//! this test binary re-executed to run one test.
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
