//! A main process with the Redis protocol endpoint on, for the redis-py tests
//! (`python/tests_redis`) and by hand: it prints where the endpoint listens, keeps a few
//! values written from Rust in the store, and answers every message published to
//! `to-rust` (received in Rust as a `String`) by publishing `rust got: <message>` to
//! `from-rust`. It stops when its standard input closes.
//!
//! ```text
//! cargo run --example redis_host                 # prints: REDIS unix=<path> tcp=<addr>
//! redis-cli -s <path> GET rust-string
//! ```
//!
//! `YUKICOMM_REDIS_PASSWORD` sets a password (then `AUTH` is needed).
//! `YUKICOMM_REDIS_HOST_PY=<script>` also runs that Python script as a child (with
//! `python/` of this repository on its `PYTHONPATH`; `YUKICOMM_PYTHON` names the
//! interpreter), as the redis-py tests do with `python/tests_redis/py_child.py`.

use std::io::Read;

use yukicomm::{App, Payload, RedisConfig};

fn main() -> yukicomm::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let mut redis = RedisConfig::unix();
    redis.tcp = Some("127.0.0.1:0".parse().expect("an address"));
    redis.password = std::env::var("YUKICOMM_REDIS_PASSWORD").ok();
    let mut app = App::new();
    app.redis(redis);
    if let Some(script) = std::env::var_os("YUKICOMM_REDIS_HOST_PY") {
        let python = std::env::var("YUKICOMM_PYTHON").unwrap_or_else(|_| "python3".into());
        let mut cmd = std::process::Command::new(python);
        cmd.arg(script)
            .env(
                "PYTHONPATH",
                format!("{}/python", env!("CARGO_MANIFEST_DIR")),
            )
            .env("PYTHONUNBUFFERED", "1");
        app.add_command("py", cmd);
    }
    app.on_after_start(|ctx| async move {
        let store = ctx.store();
        store.set("rust-string", "written in Rust")?;
        store.set("rust-int", &41i64)?;
        store.set("rust-bytes", &Payload::from(vec![0u8, 159, 255]))?;
        store.set("rust-struct", &(1u8, "two"))?;
        let sub = store.subscriber_async::<String>("to-rust").await?;
        let echo = store.clone();
        tokio::spawn(async move {
            while let Ok(m) = sub.recv_async().await {
                let _ = echo.publish("from-rust", &format!("rust got: {}", m.value));
            }
        });
        println!(
            "REDIS unix={} tcp={}",
            ctx.redis_socket_path()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            ctx.redis_addr().map(|a| a.to_string()).unwrap_or_default()
        );
        let c = ctx.clone();
        tokio::task::spawn_blocking(move || {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
            c.shutdown();
        });
        Ok(())
    });
    app.run()
}
