//! yukicomm: a main process supervising child processes that talk over typed, named,
//! duplex channels.
//!
//! - [`App`] declares the children (a function of this same binary with
//!   [`App::add_target`], or any executable with [`App::add_command`]), their restart
//!   policies and the lifecycle hooks, and runs the program.
//! - [`Channel<T>`] is one end of a channel: `send` / `recv` (blocking, timed,
//!   non-blocking, async), passive [`Channel::on_receive`] handlers, [`Selector`].
//! - The registry ([`Node::get_channel`], [`Node::set_channel`], [`Node::get_channels`])
//!   is reachable from the main process ([`MainContext`]) and from every child
//!   ([`Context`]). Every child `NAME` has the channels `NAME-active` and `NAME-passive`.
//! - [`shared_memory()`] is the shared key-value store with publish/subscribe, held by
//!   the hub and the same from every process ([`Store`]).
//!
//! The layers are separate crates: `yukicomm-wire` (frames and codec),
//! `yukicomm-client` (what every process links), `yukicomm-hub` (the router in the main
//! process) and `yukicomm-supervisor` (children and hooks). This crate re-exports them.
//!
//! # Examples
//!
//! The documented example: the main process sends to a child's two channels, the child
//! receives one passively and one actively.
//!
//! ```no_run
//! use std::time::Duration;
//! use yukicomm::{App, Context};
//!
//! async fn nonebot_main(ctx: Context) -> yukicomm::Result<()> {
//!     ctx.passive_channel::<String>()
//!         .on_receive(|s: &String| !s.is_empty(), |s| async move { println!("Passive receive: {s}") })?;
//!     let active = ctx.active_channel::<String>();
//!     while let Ok(s) = active.recv_async().await {
//!         println!("Active receive: {s}");
//!     }
//!     Ok(())
//! }
//!
//! fn main() -> yukicomm::Result<()> {
//!     let mut app = App::new();
//!     app.add_target("nonebot", nonebot_main);
//!     app.on_after_start(|ctx| async move {
//!         let passive = ctx.get_channel::<String>("nonebot-passive")?;
//!         let active = ctx.get_channel::<String>("nonebot-active")?;
//!         loop {
//!             passive.send("I am main process passive".into())?;
//!             active.send("I am main process active".into())?;
//!             tokio::time::sleep(Duration::from_secs(3)).await;
//!         }
//!     });
//!     app.run()
//! }
//! ```
//!
//! # Services
//!
//! A process serves a service under a name; any process calls it ([`mod@service`]; the
//! frames are in `docs/PROTOCOL.md`). The README's example, compiled:
//!
//! ```no_run
//! use std::time::Duration;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, Copy, Serialize, Deserialize)]
//! pub enum Lang { En, Fr }
//!
//! #[derive(Debug, Serialize, Deserialize)]
//! pub struct TranslateError(String);
//! impl std::fmt::Display for TranslateError {
//!     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str(&self.0) }
//! }
//!
//! #[yukicomm::service]
//! pub trait Translator {
//!     /// Translates `text` into `to`.
//!     async fn translate(&self, text: String, to: Lang) -> Result<String, TranslateError>;
//!     async fn languages(&self) -> Vec<Lang>;
//! }
//!
//! struct MyTranslator;
//!
//! #[yukicomm::service]
//! impl Translator for MyTranslator {
//!     async fn translate(&self, text: String, to: Lang) -> Result<String, TranslateError> {
//!         match (text.as_str(), to) {
//!             ("hello", Lang::Fr) => Ok("bonjour".into()),
//!             _ => Err(TranslateError(format!("cannot translate '{text}'"))),
//!         }
//!     }
//!     async fn languages(&self) -> Vec<Lang> { vec![Lang::En, Lang::Fr] }
//! }
//!
//! async fn plugin(ctx: yukicomm::Context) -> yukicomm::Result<()> {
//!     ctx.serve("translator", MyTranslator)?;
//!     std::future::pending::<()>().await;
//!     Ok(())
//! }
//!
//! async fn use_it(ctx: &yukicomm::MainContext) -> yukicomm::Result<()> {
//!     let tr = TranslatorClient::new(ctx, "translator");
//!     let fr = tr.translate("hello".into(), Lang::Fr).await?;
//!     let fr = tr.blocking().translate("hello".into(), Lang::Fr)?;
//!     let fr = tr.with_timeout(Duration::from_millis(200)).translate("hello".into(), Lang::Fr).await?;
//!     Ok(())
//! }
//!
//! fn main() -> yukicomm::Result<()> {
//!     let mut app = yukicomm::App::new();
//!     app.add_target("plugin", plugin);
//!     app.on_after_start(|ctx| async move { use_it(&ctx).await });
//!     app.run()
//! }
//! ```
//!
//! What the attribute does not support is a compile error pointing at it:
//!
//! ```compile_fail
//! #[yukicomm::service]
//! pub trait NotAsync {
//!     fn plain(&self) -> u32;
//! }
//! ```
//!
//! ```compile_fail
//! #[yukicomm::service]
//! pub trait Borrowing {
//!     async fn borrowed(&self, text: &str) -> u32;
//! }
//! ```
//!
//! ```compile_fail
//! #[yukicomm::service]
//! pub trait Generic {
//!     async fn generic<T: serde::Serialize>(&self, value: T) -> u32;
//! }
//! ```
//!
//! ```compile_fail
//! #[yukicomm::service]
//! pub trait Mutating {
//!     async fn mutate(&mut self) -> u32;
//! }
//! ```
#![deny(missing_docs)]

pub use yukicomm_client::service;
pub use yukicomm_client::{
    accept_all, connect, error, join, join_with, registry, ChanId, Channel, ChannelInfo,
    ConnectError, Context, ControlError, End, Error, FullPolicy, HandlerOutput, HandlerReturn,
    Iter, JoinConfig, LinkError, Node, OnReceiveError, Payload, RecvError, RecvTimeoutError,
    RegistryError, Result, Selector, SendError, SendFailure, SendFailureKind, SendTimeoutError,
    SessionConfig, TokenError, TryRecvError, Verdict,
};
pub use yukicomm_client::{
    shared_memory, store, Change, ChangeKind, Publication, Store, StoreError, StoredValue,
    Subscriber, SubscriberError, Subscription, Ttl, Watch,
};
pub use yukicomm_hub::{Clock, Fsync, HubConfig, ManualClock, RedisConfig, StoreConfig};
/// Makes a trait a service that any process can serve and call, or lets the type of an
/// `impl` of one be served as it is. See [the module `service`](mod@service) for the
/// calls' behaviour, and the crate documentation's "Services" section for an example.
///
/// On a trait, every method must be `async fn`, take `&self`, and take and return
/// owned serde types (arguments by plain name); anything else is a compile error
/// pointing at it. A method returning `Result<T, E>` passes the service's error `E`
/// back typed. The attribute generates, beside the trait (whose methods then return
/// `impl Future + Send`, which an `async fn` in an `impl` satisfies):
///
/// - `NameClient`: `new(&node, "name")`, `with_timeout`, `waiting_for_server`,
///   `blocking()`, and each method, sent at once, resolving to
///   `Result<T, CallError<E>>` (`CallError` without `E` for methods that cannot fail);
/// - `NameBlockingClient`: each method, waiting on the calling thread;
/// - `NameServer<T>`: serves any `T: Name` (`node.serve("name", NameServer::new(t))`).
///
/// On an `impl Name for MyType` block, it also makes `MyType` itself servable:
/// `node.serve("name", MyType::new())`.
///
/// Methods are named on the wire: a server that gained methods still serves older
/// callers, and a method the server lacks is [`service::CallErrorKind::UnknownMethod`].
pub use yukicomm_macros::service;
pub use yukicomm_supervisor::{App, ChildSpec, MainContext, RemoteOptions, RestartPolicy};

/// The wire format, for tools and other-language clients.
pub use yukicomm_wire as wire;

/// The names most programs need: `use yukicomm::prelude::*;`.
pub mod prelude {
    pub use crate::{
        accept_all, shared_memory, App, ChangeKind, Channel, Context, FullPolicy, MainContext,
        Publication, RecvError, RestartPolicy, Selector, SendError, Store, StoreError,
        SubscriberError, Ttl,
    };
}
