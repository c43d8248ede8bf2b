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
#![deny(missing_docs)]

pub use yukicomm_client::service;
pub use yukicomm_client::{
    accept_all, connect, error, registry, ChanId, Channel, ChannelInfo, ConnectError, Context,
    ControlError, End, Error, FullPolicy, HandlerOutput, HandlerReturn, Iter, LinkError, Node,
    OnReceiveError, Payload, RecvError, RecvTimeoutError, RegistryError, Result, Selector,
    SendError, SendFailure, SendFailureKind, SendTimeoutError, TryRecvError, Verdict,
};
pub use yukicomm_client::{
    shared_memory, store, Change, ChangeKind, Publication, Store, StoreError, StoredValue,
    Subscriber, SubscriberError, Subscription, Ttl, Watch,
};
pub use yukicomm_hub::{Clock, Fsync, HubConfig, ManualClock, StoreConfig};
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
pub use yukicomm_supervisor::{App, ChildSpec, MainContext, RestartPolicy};

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
