//! A pool of three child processes serving one service; the main process calls it in a
//! loop, and one child is killed mid-run while the calls go on.
//!
//! ```text
//! cargo run --example rpc
//! cargo run --example rpc -- --rounds 100
//! ```
//!
//! Each child serves `translator` with the `Translator` service below. The main process
//! makes `--rounds` calls (default 30), async and blocking in turn, a few at a time;
//! after a third of them it kills one child with SIGKILL. Its calls in progress fail
//! with "server gone" and are made again; the pool's two other processes serve the
//! rest, and the supervisor starts the killed child again, which rejoins the pool.
//! The program prints who answered what, and exits 0 once every round is answered.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Parser;
use serde::{Deserialize, Serialize};
use tracing::info;
use yukicomm::service::CallErrorKind;
use yukicomm::{App, Context};

#[derive(Parser, Debug, Clone)]
struct Args {
    /// How many calls the main process makes.
    #[arg(long, default_value_t = 30)]
    rounds: u32,
}

/// A language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Lang {
    En,
    Fr,
    De,
}

/// Why a translation failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TranslateError {
    /// The word is not in the dictionary.
    UnknownWord(String),
}

impl std::fmt::Display for TranslateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TranslateError::UnknownWord(w) => write!(f, "unknown word '{w}'"),
        }
    }
}

/// Translates words.
#[yukicomm::service]
pub trait Translator {
    /// Translates `text` into `to`.
    async fn translate(&self, text: String, to: Lang) -> Result<String, TranslateError>;
    /// The languages it knows.
    async fn languages(&self) -> Vec<Lang>;
    /// The id of the process serving the call.
    async fn pid(&self) -> u32;
}

struct MyTranslator;

impl MyTranslator {
    fn new() -> MyTranslator {
        MyTranslator
    }
}

#[yukicomm::service]
impl Translator for MyTranslator {
    async fn translate(&self, text: String, to: Lang) -> Result<String, TranslateError> {
        // A little work, so that calls overlap.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let word = match (text.as_str(), to) {
            ("hello", Lang::Fr) => "bonjour",
            ("hello", Lang::De) => "hallo",
            ("hello", Lang::En) => "hello",
            ("thanks", Lang::Fr) => "merci",
            ("thanks", Lang::De) => "danke",
            ("thanks", Lang::En) => "thanks",
            _ => return Err(TranslateError::UnknownWord(text)),
        };
        Ok(format!("{word} (pid {})", std::process::id()))
    }

    async fn languages(&self) -> Vec<Lang> {
        vec![Lang::En, Lang::Fr, Lang::De]
    }

    async fn pid(&self) -> u32 {
        std::process::id()
    }
}

async fn translator(ctx: Context) -> yukicomm::Result<()> {
    ctx.serve("translator", MyTranslator::new())?;
    info!("pid {} serves translator", std::process::id());
    std::future::pending::<()>().await;
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
    for i in 1..=3 {
        app.add_target(&format!("translator-{i}"), translator)
            .backoff(Duration::from_millis(200), Duration::from_secs(2));
    }
    app.on_after_start(move |ctx| async move {
        // Calls wait for a server while the children start.
        let tr = TranslatorClient::new(&ctx, "translator")
            .waiting_for_server()
            .with_timeout(Duration::from_secs(10));
        info!("languages: {:?}", tr.languages().await?);
        if let Err(e) = tr.translate("goodbye".into(), Lang::Fr).await {
            info!("as expected: {e}");
        }
        let words = ["hello", "thanks"];
        let langs = [Lang::Fr, Lang::De, Lang::En];
        let mut answered = 0;
        let mut retried = 0;
        let mut by_pid: BTreeMap<u32, u32> = BTreeMap::new();
        let mut killed = None;
        let mut round = 0;
        while round < args.rounds {
            if killed.is_none() && round >= args.rounds / 3 {
                let pid = tr.pid().await?;
                info!("killing pid {pid} with SIGKILL");
                // SAFETY: kill(2) on a pid of our own child.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                killed = Some(pid);
            }
            let (word, to) = (words[round as usize % 2], langs[round as usize % 3]);
            let result = if round % 2 == 0 {
                tr.translate(word.into(), to).await
            } else {
                let blocking = tr.blocking();
                tokio::task::spawn_blocking(move || blocking.translate(word.into(), to))
                    .await
                    .expect("the blocking call runs")
            };
            match result {
                Ok(text) => {
                    let pid = text
                        .rsplit_once("pid ")
                        .and_then(|(_, p)| p.trim_end_matches(')').parse().ok())
                        .unwrap_or(0);
                    *by_pid.entry(pid).or_default() += 1;
                    info!("round {round}: {word} -> {text}");
                    answered += 1;
                    round += 1;
                }
                Err(e) if matches!(e.kind(), CallErrorKind::ServerGone(_)) => {
                    info!("round {round}: {e}; calling again");
                    retried += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
        println!(
            "all {answered} calls answered ({retried} made again after a server died); \
             calls per process: {by_pid:?}; killed: {killed:?}"
        );
        ctx.shutdown();
        Ok(())
    });
    app.run()
}
