//! The documented example with a Python child: the main process sends to the child's two
//! channels every few seconds; the child, `python/examples/plugin.py`, receives the
//! passive one with a handler and the active one with a receive loop.
//!
//! Run it (Ctrl-C stops everything in order):
//!
//! ```text
//! python3 python/dev.py example                        # makes the Python environment first
//! cargo run --example python_plugin                    # with a python3 that has msgpack
//! cargo run --example python_plugin -- --rounds 3 --interval-ms 200
//! ```
//!
//! `YUKICOMM_PYTHON` names the interpreter (default: `target/py-venv/bin/python` if
//! `python/dev.py` made it, else `python3`); the package is taken from `python/`.
//! With `--rounds N` the main process sends N rounds, then shuts down and exits 0.

use std::process::Command;
use std::time::Duration;

use clap::Parser;
use tracing::info;
use yukicomm::App;

#[derive(Parser, Debug, Clone)]
struct Args {
    /// Send this many rounds, then shut down (default: forever).
    #[arg(long)]
    rounds: Option<u64>,
    /// Milliseconds between rounds.
    #[arg(long, default_value_t = 3000)]
    interval_ms: u64,
}

fn python() -> String {
    if let Ok(p) = std::env::var("YUKICOMM_PYTHON") {
        return p;
    }
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/target/py-venv/bin/python");
    if std::path::Path::new(venv).exists() {
        venv.into()
    } else {
        "python3".into()
    }
}

fn main() -> yukicomm::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let args = Args::parse();

    let root = env!("CARGO_MANIFEST_DIR");
    let mut plugin = Command::new(python());
    plugin
        .arg(format!("{root}/python/examples/plugin.py"))
        .env("PYTHONPATH", format!("{root}/python"))
        .env("PYTHONUNBUFFERED", "1");
    let mut app = App::new();
    app.add_command("nonebot", plugin);
    app.on_after_start(move |ctx| {
        let args = args.clone();
        async move {
            let passive = ctx.get_channel::<String>("nonebot-passive")?;
            let active = ctx.get_channel::<String>("nonebot-active")?;
            let mut round = 0;
            while args.rounds.is_none_or(|n| round < n) {
                passive.send("I am main process passive".into())?;
                active.send("I am main process active".into())?;
                round += 1;
                tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
            }
            info!("sent {round} rounds; shutting down");
            ctx.shutdown();
            Ok(())
        }
    });
    app.run()
}
