//! The Python client's benchmark: a Python child, `python/bench/bench_child.py`, measures
//! its channel round trip and one-way rates against this main process, and store `get`
//! calls per second, then `multiprocessing.Pipe` between two Python processes in the
//! same run. Figures and method: BENCHMARKS.md, "Python client".
//!
//! ```text
//! python3 python/dev.py bench              # builds this in release mode, then runs it
//! python3 python/dev.py bench -- --quick   # fewer rounds: a smoke test
//! ```
//!
//! `YUKICOMM_PYTHON` names the interpreter (default `python3`, which needs `msgpack`).
//! The main process answers the child on the child's own active channel: it echoes
//! messages, sends `flood N` messages on request, and counts what a `sink` sends it.

use std::process::Command;
use std::time::Duration;

use yukicomm::{App, MainContext};

fn serve(ctx: &MainContext) -> yukicomm::Result<()> {
    let ch = ctx.get_channel::<String>("bench-active")?;
    ctx.store().set(
        "bench.key",
        "a value of some sixty-four bytes, as in the Rust store bench",
    )?;
    let payload = "x".repeat(16);
    loop {
        let m = ch.recv()?;
        if let Some(n) = m.strip_prefix("flood ") {
            let n: u64 = n.parse().unwrap_or(0);
            for _ in 0..n {
                ch.send(payload.clone())?;
            }
            ch.send("end".into())?;
        } else if m == "sink" {
            let mut count = 0u64;
            loop {
                let x = ch.recv()?;
                if x == "sink-end" {
                    break;
                }
                count += 1;
            }
            ch.send(count.to_string())?;
        } else if m == "quit" {
            return Ok(());
        } else {
            ch.send(m)?;
        }
    }
}

fn main() -> yukicomm::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let root = env!("CARGO_MANIFEST_DIR");
    let python = std::env::var("YUKICOMM_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut child = Command::new(python);
    child
        .arg(format!("{root}/python/bench/bench_child.py"))
        .args(std::env::args().skip(1).filter(|a| a != "--"))
        .env("PYTHONPATH", format!("{root}/python"))
        .env("PYTHONUNBUFFERED", "1");
    let mut app = App::new();
    app.add_command("bench", child);
    app.on_after_start(|ctx| async move {
        let server = ctx.clone();
        let result = tokio::task::spawn_blocking(move || serve(&server)).await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("bench: {e}"),
            Err(e) => eprintln!("bench: the serving task failed: {e}"),
        }
        // Let the child print its last lines before it is stopped.
        tokio::time::sleep(Duration::from_millis(200)).await;
        ctx.shutdown();
        Ok(())
    });
    app.run()
}
