//! yukicomm's link for processes on other machines.
//!
//! A remote process reaches the hub over TCP; every connection is TLS 1.3 with mutual
//! authentication. This crate holds the pieces that only this transport needs:
//!
//! - [`authority`]: the deployment's certificate authority and the hub's certificate;
//! - [`token`]: join tokens (single use, expiring, naming a process, pinning the
//!   authority);
//! - [`tls`]: the TLS configurations of both sides;
//! - [`opening`]: the first record on a link (enrolment, or a session opened or
//!   resumed) and the hub's answer;
//! - [`session`]: a resumable byte stream carried over successive TLS links, so that a
//!   link cut within the grace period loses nothing;
//! - [`server`]: the hub's listener; [`client`]: the remote process's side.
//!
//! The frames that travel inside a session are the ones a local child sends over its
//! Unix socket: the connection engine on both sides is the same.

pub mod authority;
pub mod client;
pub mod opening;
pub mod server;
pub mod session;
pub mod tls;
pub mod token;

/// What went wrong in the remote link.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// A file or socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, and on what.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A certificate or key could not be made, read or used.
    #[error("certificate: {0}")]
    Certificate(String),
    /// Enrolment with a join token failed.
    #[error("enrolment: {0}")]
    Enrolment(String),
    /// Not a hub address.
    #[error("{0}")]
    Address(String),
    /// The hub refused the session.
    #[error("the hub refused the session: {0}")]
    Refused(String),
}
