//! A program to look at with the `yukicomm` command: a steady worker that echoes what
//! the main process sends it, a flaky one that fails soon after each start (and is
//! given up on after three restarts), and the main process publishing orders and
//! keeping a counter in the store. With `--remote`, it also listens on 127.0.0.1 for
//! processes on other machines and starts one itself, `far` (this program again, with a
//! join token), which echoes as `steady` does.
//!
//! ```text
//! cargo run -p yukicomm-cli --example observed
//! YUKICOMM_MONITOR=1 cargo run -p yukicomm-cli --example observed -- --metrics 127.0.0.1:9464
//! # in another terminal
//! cargo run -p yukicomm-cli -- status
//! cargo run -p yukicomm-cli -- top
//! cargo run -p yukicomm-cli -- monitor 'orders.*'
//! curl -s 127.0.0.1:9464/metrics
//! ```
//!
//! Runs until Ctrl-C (or SIGTERM). The tests in `crates/cli/tests/status.rs` run it.

use std::time::Duration;

use yukicomm::{App, Context, RestartPolicy};

async fn steady(ctx: Context) -> yukicomm::Result<()> {
    let input = ctx.active_channel::<u64>();
    let output = ctx.passive_channel::<u64>();
    while let Ok(n) = input.recv_async().await {
        output.send_async(n).await?;
    }
    Ok(())
}

async fn flaky(_ctx: Context) -> yukicomm::Result<()> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    eprintln!("flaky: giving up with status 3");
    std::process::exit(3);
}

/// The remote process: joins with `YUKICOMM_HUB` and `YUKICOMM_JOIN`, and echoes.
fn far() -> yukicomm::Result<()> {
    let ctx = yukicomm::connect()?;
    let input = ctx.active_channel::<u64>();
    let output = ctx.passive_channel::<u64>();
    for n in input.iter() {
        output.send(n?)?;
    }
    Ok(())
}

fn main() -> yukicomm::Result<()> {
    if std::env::var_os("YUKICOMM_JOIN").is_some() {
        return far();
    }
    let mut args = std::env::args().skip(1);
    let mut metrics = None;
    let mut remote = false;
    while let Some(a) = args.next() {
        if a == "--remote" {
            remote = true;
            continue;
        }
        match (a.as_str(), args.next()) {
            ("--metrics", Some(addr)) => {
                metrics = Some(
                    addr.parse()
                        .map_err(|e| yukicomm::Error::Other(format!("--metrics {addr}: {e}")))?,
                )
            }
            _ => return Err(yukicomm::Error::Other(format!("unknown argument {a}"))),
        }
    }
    let mut app = App::new();
    app.exec_args(Vec::<String>::new());
    if let Some(addr) = metrics {
        app.metrics(addr);
    }
    if remote {
        app.listen_remote("127.0.0.1:0");
    }
    app.add_target("steady", steady);
    app.add_target("flaky", flaky)
        .restart(RestartPolicy::Always)
        .backoff(Duration::from_millis(200), Duration::from_millis(400))
        .intensity(3, Duration::from_secs(600));
    app.on_after_start(move |ctx| async move {
        let _far = if remote {
            let token = ctx.join_token("far", Duration::from_secs(60))?;
            let addr = ctx.remote_addr().expect("listening");
            let far = tokio::process::Command::new(
                std::env::current_exe().map_err(|e| yukicomm::Error::Other(e.to_string()))?,
            )
            .env("YUKICOMM_HUB", format!("yk://{addr}"))
            .env("YUKICOMM_JOIN", token)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| yukicomm::Error::Other(format!("cannot start far: {e}")))?;
            let to_far = ctx.get_channel::<u64>("far-active")?;
            to_far.send_async(1).await?;
            Some(far)
        } else {
            None
        };
        let to = ctx.get_channel::<u64>("steady-active")?;
        let back = ctx.get_channel::<u64>("steady-passive")?;
        let store = ctx.store();
        let _orders = store.subscriber::<u64>("orders.*")?;
        for n in 0u64.. {
            to.send_async(n).await?;
            let _ = tokio::time::timeout(Duration::from_secs(5), back.recv_async()).await;
            store.publish_async("orders.new", &n).await?;
            store.incr_async("orders", 1).await?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    });
    app.run()
}
