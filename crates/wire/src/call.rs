//! Service frames: a call to a named service, its reply, and its cancellation.
//!
//! Calls are hot frames, so they have fixed binary layouts (integers little-endian):
//!
//! | frame | payload |
//! |---|---|
//! | `Call` (kind 10) | `u32 id`, `u32 timeout_ms`, `u8 flags`, `u8` service length, service, `u8` method length, method, body (rest) |
//! | `CallReply` (kind 11) | `u32 id`, `u8 status`, body (rest) |
//! | `Cancel` (kind 12) | `u32 id` |
//!
//! A process sends `Call` to the hub, which forwards it, with an id of its own and the
//! time left, to one process serving the service; that process answers with
//! `CallReply`, which the hub forwards to the caller with the caller's id. `Cancel`
//! travels the same way as the call: the caller gives up, the server drops the handler.
//! `docs/PROTOCOL.md` describes the exchange for other languages.

use bytes::{Buf, Bytes, BytesMut};

use crate::kinds::{malformed, FrameError, Kind};

/// [`Call::flags`] bit: if no process serves the service, the call waits for one
/// (within its deadline) instead of failing at once with [`CallStatus::NoServer`].
pub const WAIT_FOR_SERVER: u8 = 1;

/// Longest method name, in bytes.
pub const MAX_METHOD: usize = 255;

/// A call to a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// Chosen by the sender, echoed in the reply.
    pub id: u32,
    /// Milliseconds the caller still waits for the reply.
    pub timeout_ms: u32,
    /// [`WAIT_FOR_SERVER`], or 0.
    pub flags: u8,
    /// The service's registered name (a valid channel name).
    pub service: String,
    /// The method, as the service names it (1 to 255 bytes of UTF-8).
    pub method: String,
    /// The MessagePack-encoded arguments.
    pub body: Bytes,
}

/// How a call ended, in a [`CallReply`](crate::Frame::CallReply).
///
/// With [`Ok`](CallStatus::Ok) the body is the result and with
/// [`ServiceError`](CallStatus::ServiceError) the service's own error, each as the
/// service encodes it; with any other status the body is a MessagePack string saying
/// what happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CallStatus {
    /// The handler returned a result.
    Ok = 0,
    /// The handler returned the service's own error.
    ServiceError = 1,
    /// No process serves the service.
    NoServer = 2,
    /// The serving process ended (died, or restarted) before it replied.
    ServerGone = 3,
    /// Every server is at its bound of calls in progress, and refuses more.
    Overloaded = 4,
    /// The service has no such method.
    UnknownMethod = 5,
    /// The arguments did not decode as the method's.
    BadRequest = 6,
    /// The handler panicked; the server goes on serving.
    Panicked = 7,
    /// The reply would exceed the largest frame.
    TooLarge = 8,
    /// The deadline passed before a server took the call.
    Timeout = 9,
    /// The server could not produce a reply (its result did not encode).
    Failed = 10,
}

impl CallStatus {
    /// Parses the wire byte.
    pub fn from_u8(b: u8) -> Option<CallStatus> {
        use CallStatus::*;
        Some(match b {
            0 => Ok,
            1 => ServiceError,
            2 => NoServer,
            3 => ServerGone,
            4 => Overloaded,
            5 => UnknownMethod,
            6 => BadRequest,
            7 => Panicked,
            8 => TooLarge,
            9 => Timeout,
            10 => Failed,
            _ => return None,
        })
    }
}

/// Appends a `Call` frame, letting `body` write the MessagePack arguments in place.
/// Names longer than a byte can count are cut (the hub then finds no such service).
///
/// On error `out` is left as it was.
///
/// # Errors
///
/// Whatever `body` returns.
pub fn encode_call<E>(
    out: &mut Vec<u8>,
    id: u32,
    timeout_ms: u32,
    flags: u8,
    service: &str,
    method: &str,
    body: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<(), E> {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, Kind::Call as u8]);
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&timeout_ms.to_le_bytes());
    out.push(flags);
    for name in [service, method] {
        let name = &name.as_bytes()[..name.len().min(u8::MAX as usize)];
        out.push(name.len() as u8);
        out.extend_from_slice(name);
    }
    if let Err(e) = body(out) {
        out.truncate(start);
        return Err(e);
    }
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    Ok(())
}

/// Appends a `CallReply` frame whose body `body` writes in place.
///
/// On error `out` is left as it was.
///
/// # Errors
///
/// Whatever `body` returns.
pub fn encode_call_reply<E>(
    out: &mut Vec<u8>,
    id: u32,
    status: CallStatus,
    body: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<(), E> {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, Kind::CallReply as u8]);
    out.extend_from_slice(&id.to_le_bytes());
    out.push(status as u8);
    if let Err(e) = body(out) {
        out.truncate(start);
        return Err(e);
    }
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    Ok(())
}

/// Appends a `Cancel` frame.
pub fn encode_cancel(out: &mut Vec<u8>, id: u32) {
    out.extend_from_slice(&5u32.to_le_bytes());
    out.push(Kind::Cancel as u8);
    out.extend_from_slice(&id.to_le_bytes());
}

/// A MessagePack string saying what happened: the body of a reply whose status is
/// neither `Ok` nor `ServiceError`.
pub fn status_message(message: &str) -> Vec<u8> {
    // Writing a string to a Vec cannot fail.
    rmp_serde::to_vec(message).unwrap_or_default()
}

/// Reads the message of a reply written by [`status_message`]; another body gives an
/// empty string.
pub fn read_status_message(body: &[u8]) -> String {
    rmp_serde::from_slice(body).unwrap_or_default()
}

fn name(p: &mut BytesMut, what: &str) -> Result<String, FrameError> {
    if p.is_empty() {
        return Err(malformed(Kind::Call, format!("missing {what} length")));
    }
    let n = p.get_u8() as usize;
    if n == 0 || p.len() < n {
        return Err(malformed(Kind::Call, format!("bad {what} length")));
    }
    let raw = p.split_to(n);
    String::from_utf8(raw.to_vec())
        .map_err(|_| malformed(Kind::Call, format!("{what} is not UTF-8")))
}

pub(crate) fn decode_call(mut p: BytesMut) -> Result<Call, FrameError> {
    if p.len() < 9 {
        return Err(malformed(Kind::Call, "header shorter than 9 bytes"));
    }
    let id = p.get_u32_le();
    let timeout_ms = p.get_u32_le();
    let flags = p.get_u8();
    let service = name(&mut p, "service")?;
    let method = name(&mut p, "method")?;
    Ok(Call {
        id,
        timeout_ms,
        flags,
        service,
        method,
        body: p.freeze(),
    })
}

pub(crate) fn decode_call_reply(mut p: BytesMut) -> Result<(u32, CallStatus, Bytes), FrameError> {
    if p.len() < 5 {
        return Err(malformed(Kind::CallReply, "header shorter than 5 bytes"));
    }
    let id = p.get_u32_le();
    let status = CallStatus::from_u8(p.get_u8())
        .ok_or_else(|| malformed(Kind::CallReply, "unknown status"))?;
    Ok((id, status, p.freeze()))
}

pub(crate) fn decode_cancel(mut p: BytesMut) -> Result<u32, FrameError> {
    if p.len() != 4 {
        return Err(malformed(Kind::Cancel, "payload is not 4 bytes"));
    }
    Ok(p.get_u32_le())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_messages_read_back() {
        assert_eq!(
            read_status_message(&status_message("no server")),
            "no server"
        );
        assert_eq!(read_status_message(&[0xc1]), "");
        assert_eq!(read_status_message(&[]), "");
    }

    #[test]
    fn every_status_byte_parses_back() {
        for b in 0..=10u8 {
            assert_eq!(CallStatus::from_u8(b).map(|s| s as u8), Some(b));
        }
        assert_eq!(CallStatus::from_u8(11), None);
    }
}
