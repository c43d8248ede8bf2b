//! The documented example: the main process sends to a child's two channels every few
//! seconds; the child receives the passive one with a handler and the active one with a
//! receive loop.
//!
//! Run it (Ctrl-C stops everything in order):
//!
//! ```text
//! cargo run --example quickstart
//! cargo run --example quickstart -- --rounds 3 --interval-ms 200
//! ```
//!
//! With `--rounds N` the main process sends N rounds, then shuts down and exits 0.

use std::time::Duration;

use clap::Parser;
use tracing::info;
use yukicomm::{App, Context};

#[derive(Parser, Debug, Clone)]
struct Args {
    /// Send this many rounds, then shut down (default: forever).
    #[arg(long)]
    rounds: Option<u64>,
    /// Milliseconds between rounds.
    #[arg(long, default_value_t = 3000)]
    interval_ms: u64,
}

async fn nonebot_main(ctx: Context) -> yukicomm::Result<()> {
    ctx.passive_channel::<String>().on_receive(
        |s: &String| !s.is_empty(),
        |s| async move { info!("Passive receive: {s}") },
    )?;
    let active = ctx.active_channel::<String>();
    while let Ok(s) = active.recv_async().await {
        info!("Active receive: {s}");
    }
    Ok(())
}

fn main() -> yukicomm::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let args = Args::parse();

    let mut app = App::new();
    app.add_target("nonebot", nonebot_main);
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
