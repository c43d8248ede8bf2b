//! A child that asks to be restarted, and shows its new pid each time.
//!
//! ```text
//! cargo run --example restart
//! cargo run --example restart -- --restarts 5
//! ```
//!
//! The child announces its pid on its active channel; the main process answers
//! "restart yourself" until the child has been restarted `--restarts` times (default
//! 3), then shuts everything down and exits 0. The hooks print each restart.

use std::time::Duration;

use clap::Parser;
use serde::{Deserialize, Serialize};
use tracing::info;
use yukicomm::{App, Context};

#[derive(Parser, Debug, Clone)]
struct Args {
    /// How many times the child restarts itself.
    #[arg(long, default_value_t = 3)]
    restarts: u32,
}

#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    RestartYourself,
    Done,
}

async fn worker(ctx: Context) -> yukicomm::Result<()> {
    let pid = std::process::id();
    let up = ctx.passive_channel::<u32>();
    let down = ctx.active_channel::<Reply>();
    info!("worker running as pid {pid}");
    up.send_async(pid).await?;
    match down.recv_async().await? {
        Reply::RestartYourself => {
            info!("pid {pid}: asking the supervisor for a restart");
            ctx.request_restart()?;
            // The supervisor stops this process; until then, wait.
            std::future::pending::<()>().await;
        }
        Reply::Done => info!("pid {pid}: done"),
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
    app.add_target("worker", worker);
    app.on_before_process_restart(|_, name| async move {
        info!("restarting {name}");
        Ok(())
    });
    app.on_after_restart(|_, name| async move {
        info!("{name} restarted");
        Ok(())
    });
    app.on_after_start(move |ctx| async move {
        let pids = ctx.get_channel::<u32>("worker-passive")?;
        let replies = ctx.get_channel::<Reply>("worker-active")?;
        let mut seen = Vec::new();
        loop {
            let pid = pids.recv_timeout(Duration::from_secs(30))?;
            seen.push(pid);
            info!("worker is pid {pid} (start {})", seen.len());
            if seen.len() as u32 > args.restarts {
                replies.send(Reply::Done)?;
                break;
            }
            replies.send(Reply::RestartYourself)?;
        }
        info!("pids: {seen:?}");
        ctx.shutdown();
        Ok(())
    });
    app.run()
}
