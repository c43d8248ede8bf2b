//! What both benchmarks share: logging, a last-resort deadline, running the
//! measurements in the main process of an `App` and printing their report, the small
//! helpers around channels and errors, and (in submodules) the common options, the
//! statistics over rounds and the report table.
//!
//! - [`options`]: `--quick`, `--markdown` and their environment variables;
//! - [`stats`]: percentiles of latency samples, the median round, rates;
//! - [`report`]: the "measure | yukicomm | floor or peer | ratio" table as aligned text
//!   or markdown, and the number formats in its cells.
// Each benchmark uses its own part of what is here.
#![allow(dead_code)]

pub mod options;
pub mod report;
pub mod stats;

use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use yukicomm::{App, Channel, Error, MainContext, SendError};

/// Logs warnings and errors to stderr (stdout carries the report).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Whether this process is the bench's main process (not one of its children).
pub fn is_main() -> bool {
    std::env::var_os(yukicomm::wire::ENV_TARGET).is_none()
}

/// A last resort against a hang anywhere, shutdown included: exits with an error after
/// `limit`.
pub fn deadline(name: &'static str, limit: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("{name}: still running after {limit:?}; giving up");
        std::process::exit(1);
    });
}

/// Runs `app`; once it has started, runs `measure` on a blocking thread of the main
/// process, shuts down, and prints the report it rendered (or its error).
pub fn run<F>(name: &'static str, mut app: App, measure: F) -> ExitCode
where
    F: FnOnce(&MainContext) -> Result<String, String> + Send + 'static,
{
    static OUTCOME: Mutex<Option<Result<String, String>>> = Mutex::new(None);
    let measure = std::sync::Arc::new(Mutex::new(Some(measure)));
    app.exec_args(Vec::<String>::new());
    app.on_after_start(move |ctx| {
        let measure = measure.lock().unwrap_or_else(|e| e.into_inner()).take();
        async move {
            let Some(measure) = measure else {
                return Ok(());
            };
            let c = ctx.clone();
            let result = tokio::task::spawn_blocking(move || measure(&c))
                .await
                .map_err(|e| format!("the bench thread failed: {e}"))
                .and_then(|r| r);
            *OUTCOME.lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
            ctx.shutdown();
            Ok(())
        }
    });
    if let Err(e) = app.run() {
        eprintln!("{name}: {e}");
        return ExitCode::FAILURE;
    }
    match OUTCOME.lock().unwrap_or_else(|e| e.into_inner()).take() {
        Some(Ok(report)) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Some(Err(e)) => {
            eprintln!("{name} failed: {e}");
            ExitCode::FAILURE
        }
        None => {
            eprintln!("{name}: stopped before the measurements finished");
            ExitCode::FAILURE
        }
    }
}

/// Sends without waiting when there is room, else waits for room at most `limit`.
pub fn send<T: Serialize + DeserializeOwned + Send + 'static>(
    ch: &Channel<T>,
    m: T,
    limit: Duration,
) -> Result<(), Error> {
    match ch.try_send(m) {
        Ok(()) => Ok(()),
        Err(SendError::Full { value, .. }) => Ok(ch.send_timeout(value, limit)?),
        Err(e) => Err(e.into()),
    }
}

/// An error of the bench itself, in plain words.
pub fn other(message: impl Into<String>) -> Error {
    Error::Other(message.into())
}

/// Turns an I/O error into one that says what was being done.
pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// A path in the temporary directory that no other run uses: `prefix`, this process's
/// id, the current time's nanoseconds, then `suffix`.
pub fn temp_path(prefix: &str, suffix: &str) -> std::path::PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!("{prefix}-{}-{nanos}{suffix}", std::process::id()))
}
