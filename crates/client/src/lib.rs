//! yukicomm's client side: what every process of a yukicomm program links.
//!
//! - [`Channel<T>`]: one end of a named, typed, duplex channel; blocking, timed,
//!   non-blocking and async sends and receives, passive handlers, [`Selector`].
//! - [`Node`]: the process's connection: the channel registry and process control.
//! - [`Context`] and [`connect`]: what a child process gets.
//! - [`Store`] ([`shared_memory`]): the shared key-value store with publish/subscribe,
//!   the same from every process.
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
pub mod store;
#[doc(hidden)]
pub mod transport;
mod value;

pub use channel::{Channel, FullPolicy, Iter};
pub use context::{connect, connect_in, Context};
pub use error::{
    ConnectError, ControlError, Error, LinkError, OnReceiveError, RecvError, RecvTimeoutError,
    RegistryError, Result, SendError, SendFailure, SendFailureKind, SendTimeoutError, TryRecvError,
};
pub use node::Node;
pub use passive::{accept_all, Async, HandlerOutput, HandlerReturn, Sync, Verdict};
pub use select::Selector;
pub use store::{
    shared_memory, Change, ChangeKind, Publication, Store, StoreError, StoredValue, Subscriber,
    SubscriberError, Subscription, Ttl, Watch,
};
pub use value::Payload;
pub use yukicomm_wire::{ChanId, ChannelInfo, End};
