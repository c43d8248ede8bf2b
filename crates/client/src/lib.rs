//! yukicomm's client side: what every process of a yukicomm program links.
//!
//! - [`Channel<T>`]: one end of a named, typed, duplex channel; blocking, timed,
//!   non-blocking and async sends and receives, passive handlers, [`Selector`].
//! - [`Node`]: the process's connection: the channel registry and process control.
//! - [`Context`] and [`connect`]: what a child process gets.
//! - [`Store`] ([`shared_memory`]): the shared key-value store with publish/subscribe,
//!   the same from every process.
//!
//! Inside, in layers from the bottom: a transport carries frames to the hub and back
//! (`remote.rs`, the socket of a child; the supervisor's direct calls in the main
//! process) through the hidden `transport` module; the node (`node.rs`) holds the state
//! of every channel end of the process (`end.rs`) and hands each arriving frame to its
//! end, or to a sink a feature registered on it; the features sit on top: channels
//! (`channel.rs`, `passive.rs`, `select.rs`), the registry (`registry.rs`), the store
//! (`store/`, which registers its own sink, `store/sink.rs`), and the child's
//! [`Context`] (`context.rs`).
//!
//! A child started by a yukicomm supervisor joins with [`connect`]:
//!
//! ```no_run
//! fn main() -> yukicomm_client::Result<()> {
//!     let ctx = yukicomm_client::connect()?;
//!     let active = ctx.active_channel::<String>();
//!     while let Ok(text) = active.recv() {
//!         println!("Active receive: {text}");
//!     }
//!     Ok(())
//! }
//! ```
#![deny(missing_docs)]

mod channel;
mod context;
mod end;
pub mod error;
mod node;
mod passive;
pub mod registry;
mod remote;
mod select;
pub mod service;
pub mod store;
#[doc(hidden)]
pub mod transport;
mod value;

pub use channel::{Channel, FullPolicy, Iter};
pub use context::{connect, connect_in, join, join_with, Context};
pub use error::{
    ConnectError, ControlError, Error, LinkError, OnReceiveError, RecvError, RecvTimeoutError,
    RegistryError, Result, SendError, SendFailure, SendFailureKind, SendTimeoutError, TokenError,
    TryRecvError,
};
pub use node::Node;
pub use passive::{accept_all, Async, HandlerOutput, HandlerReturn, Sync, Verdict};
pub use select::Selector;
pub use store::{
    shared_memory, Change, ChangeKind, Publication, Store, StoreError, StoredValue, Subscriber,
    SubscriberError, Subscription, Ttl, Watch,
};
pub use value::Payload;
pub use yukicomm_remote::client::JoinConfig;
pub use yukicomm_remote::session::SessionConfig;
pub use yukicomm_wire::{ChanId, ChannelInfo, End};

/// What an application reaches from a [`Context`] (and, through it, a [`Node`]): the
/// registry, the store, `flush`, the runtime.
///
/// ```no_run
/// fn demo(ctx: &yukicomm_client::Context) -> yukicomm_client::Result<()> {
///     let numbers = ctx.get_channel::<u32>("numbers")?;
///     numbers.send(1)?;
///     ctx.flush(std::time::Duration::from_secs(5))?;
///     ctx.store().set("k", &1)?;
///     let _handle: &tokio::runtime::Handle = ctx.runtime();
///     Ok(())
/// }
/// ```
///
/// The connection's plumbing is not reachable from there: each of these fails to
/// compile.
///
/// ```compile_fail
/// fn demo(ctx: &yukicomm_client::Context) {
///     ctx.connection_lost();
/// }
/// ```
///
/// ```compile_fail
/// fn demo(ctx: &yukicomm_client::Context, frame: yukicomm_wire::Frame) {
///     ctx.dispatch(frame);
/// }
/// ```
///
/// ```compile_fail
/// fn demo(ctx: &yukicomm_client::Context) {
///     ctx.dispatch_all(std::iter::empty());
/// }
/// ```
///
/// ```compile_fail
/// fn demo(ctx: &yukicomm_client::Context) {
///     let _ = ctx.is_lost();
/// }
/// ```
///
/// ```compile_fail
/// fn demo(ctx: &yukicomm_client::Context, t: std::sync::Arc<dyn yukicomm_client::transport::Transport>) {
///     ctx.set_transport(t);
/// }
/// ```
///
/// ```compile_fail
/// fn demo(rt: tokio::runtime::Handle) {
///     let _ = yukicomm_client::Node::new(8, 1024, rt, std::time::Duration::from_secs(1));
/// }
/// ```
#[cfg(doctest)]
pub struct InternalsAreNotReachable;
