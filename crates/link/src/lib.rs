//! yukicomm's connection engine: what both ends of a connection do with its socket.
//!
//! A child and the hub each hold one end of every connection, and each end does the same
//! things with it; this crate is where they live, once. [`wire`](yukicomm_wire) says what
//! the bytes mean; this crate moves them:
//!
//! - [`Outbox`]: the write side, which coalesces frames into few writes and has exactly
//!   one writer at a time;
//! - [`role::ReadRole`]: the read side, shared between a background reader and threads
//!   that read the socket themselves while they wait for their own message, and
//!   [`reader`]: the read buffer, decoding and handing frames over, and the background
//!   reader's loop;
//! - [`calls::Calls`]: the calls awaiting replies, in one table with one id space;
//! - [`sys`]: the few system calls under them (`poll`, pipes, socket options), through
//!   `rustix`;
//! - [`shm`]: two byte rings in memory shared with a process on the same machine, one
//!   each way, and passing descriptors over a Unix socket.
//!
//! ```
//! use std::time::Duration;
//! use yukicomm_link::{Outbox, OutboxSink};
//!
//! struct Socket(std::sync::Mutex<Vec<u8>>);
//! impl OutboxSink for Socket {
//!     fn write(&self, buf: &[u8]) -> std::io::Result<usize> {
//!         self.0.lock().unwrap().extend_from_slice(buf);
//!         Ok(buf.len())
//!     }
//!     fn wake_flusher(&self) {}
//! }
//!
//! let socket = Socket(Default::default());
//! let outbox = Outbox::new(Duration::ZERO);
//! outbox
//!     .push::<()>(&socket, |buf| {
//!         buf.extend_from_slice(b"frame");
//!         Ok(())
//!     })
//!     .unwrap();
//! assert_eq!(&*socket.0.lock().unwrap(), b"frame");
//! ```
#![deny(missing_docs)]

pub mod calls;
mod outbox;
mod pending;
pub mod reader;
pub mod role;
pub mod shm;
pub mod stream;
pub mod sys;

pub use outbox::{Outbox, OutboxSink, Push};
pub use pending::{Mark, Pending};
