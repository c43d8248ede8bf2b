//! The first record on a TLS link, and the hub's answer: enrolment (a join token and a
//! certificate request, answered with a certificate) or the opening of a session (new,
//! or resumed after a broken link). Integers are little-endian.
//!
//! ```text
//! ENROL    0x01  u8 name len, name, u16 secret len, secret, u32 request len, request (DER)
//!   ok     0x81  u32 certificate len, certificate (DER), u32 authority len, authority (DER)
//!   ok     0x84  the same, then u32 key len, the key (PKCS#8 DER): for an empty request,
//!                the hub made the key (for clients that cannot make one)
//!   error  0x8F  u16 len, message (UTF-8)
//! AUTHORITY 0x03 (nothing more)
//!   ok     0x83  u32 authority len, the authority's certificate (DER)
//! SESSION  0x02  u64 session id (0: a new session), u64 bytes received in that session
//!   ok     0x82  u64 session id, u64 bytes the hub received in that session
//!   error  0x8E  u16 len, message (UTF-8)
//! ```

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Enrolment.
pub const ENROL: u8 = 0x01;
/// A session opens or resumes.
pub const SESSION: u8 = 0x02;
/// The authority's certificate, asked for.
pub const AUTHORITY: u8 = 0x03;
/// The authority's certificate.
pub const AUTHORITY_IS: u8 = 0x83;
/// Enrolment succeeded, with a key the hub made.
pub const ENROLLED_WITH_KEY: u8 = 0x84;
/// Enrolment succeeded.
pub const ENROLLED: u8 = 0x81;
/// The session is open.
pub const OPENED: u8 = 0x82;
/// The session was refused.
pub const SESSION_REFUSED: u8 = 0x8E;
/// Enrolment was refused.
pub const ENROL_REFUSED: u8 = 0x8F;

/// Largest certificate or certificate request accepted.
pub const MAX_DER: usize = 16 * 1024;
/// Largest token secret accepted.
const MAX_SECRET: usize = 256;
/// Largest refusal message read.
const MAX_MESSAGE: usize = 4096;

/// The first record a remote process sends.
#[derive(PartialEq, Eq)]
pub enum Opening {
    /// Enrolment with a join token.
    Enrol {
        /// The process the token names.
        name: String,
        /// The token's secret.
        secret: String,
        /// A certificate request (DER).
        request: Vec<u8>,
    },
    /// The authority's certificate, so that a client that cannot read the hub's chain
    /// checks it against the token's fingerprint, then trusts it alone.
    Authority,
    /// A session opens (`id` 0) or resumes.
    Session {
        /// The session, or 0 for a new one.
        id: u64,
        /// Bytes the process received in that session.
        received: u64,
    },
}

impl std::fmt::Debug for Opening {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // Never the secret.
            Opening::Enrol { name, .. } => f
                .debug_struct("Enrol")
                .field("name", name)
                .finish_non_exhaustive(),
            Opening::Authority => f.write_str("Authority"),
            Opening::Session { id, received } => f
                .debug_struct("Session")
                .field("id", id)
                .field("received", received)
                .finish(),
        }
    }
}

fn invalid(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

async fn read_len<R: AsyncRead + Unpin>(
    rd: &mut R,
    len: usize,
    max: usize,
    what: &str,
) -> std::io::Result<Vec<u8>> {
    if len > max {
        return Err(invalid(format!("{what} of {len} bytes exceeds {max}")));
    }
    let mut buf = vec![0u8; len];
    rd.read_exact(&mut buf).await?;
    Ok(buf)
}

fn text(bytes: Vec<u8>, what: &str) -> std::io::Result<String> {
    String::from_utf8(bytes).map_err(|_| invalid(format!("{what} is not UTF-8")))
}

impl Opening {
    /// Reads the first record of a link.
    pub async fn read<R: AsyncRead + Unpin>(rd: &mut R) -> std::io::Result<Opening> {
        match rd.read_u8().await? {
            ENROL => {
                let len = rd.read_u8().await? as usize;
                let name = text(read_len(rd, len, 255, "a name").await?, "the name")?;
                let len = rd.read_u16_le().await? as usize;
                let secret = text(
                    read_len(rd, len, MAX_SECRET, "a secret").await?,
                    "the secret",
                )?;
                let len = rd.read_u32_le().await? as usize;
                let request = read_len(rd, len, MAX_DER, "a certificate request").await?;
                Ok(Opening::Enrol {
                    name,
                    secret,
                    request,
                })
            }
            SESSION => Ok(Opening::Session {
                id: rd.read_u64_le().await?,
                received: rd.read_u64_le().await?,
            }),
            AUTHORITY => Ok(Opening::Authority),
            other => Err(invalid(format!("an unknown opening record {other:#04x}"))),
        }
    }

    /// The record's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Opening::Enrol {
                name,
                secret,
                request,
            } => {
                out.push(ENROL);
                out.push(name.len().min(255) as u8);
                out.extend_from_slice(&name.as_bytes()[..name.len().min(255)]);
                out.extend_from_slice(&(secret.len() as u16).to_le_bytes());
                out.extend_from_slice(secret.as_bytes());
                out.extend_from_slice(&(request.len() as u32).to_le_bytes());
                out.extend_from_slice(request);
            }
            Opening::Authority => out.push(AUTHORITY),
            Opening::Session { id, received } => {
                out.push(SESSION);
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&received.to_le_bytes());
            }
        }
        out
    }
}

/// Writes a refusal (`kind` is [`ENROL_REFUSED`] or [`SESSION_REFUSED`]) and flushes.
pub async fn refuse<W: AsyncWrite + Unpin>(
    wr: &mut W,
    kind: u8,
    message: &str,
) -> std::io::Result<()> {
    let message = &message.as_bytes()[..message.len().min(MAX_MESSAGE)];
    let mut out = vec![kind];
    out.extend_from_slice(&(message.len() as u16).to_le_bytes());
    out.extend_from_slice(message);
    wr.write_all(&out).await?;
    wr.flush().await
}

/// Writes the answer to an enrolment (with the key, if the hub made it) and flushes.
pub async fn enrolled<W: AsyncWrite + Unpin>(
    wr: &mut W,
    cert: &[u8],
    ca: &[u8],
    key: Option<&[u8]>,
) -> std::io::Result<()> {
    let mut out = vec![if key.is_some() {
        ENROLLED_WITH_KEY
    } else {
        ENROLLED
    }];
    for der in [cert, ca].into_iter().chain(key) {
        out.extend_from_slice(&(der.len() as u32).to_le_bytes());
        out.extend_from_slice(der);
    }
    wr.write_all(&out).await?;
    wr.flush().await
}

/// Writes the authority's certificate and flushes.
pub async fn authority<W: AsyncWrite + Unpin>(wr: &mut W, ca: &[u8]) -> std::io::Result<()> {
    let mut out = vec![AUTHORITY_IS];
    out.extend_from_slice(&(ca.len() as u32).to_le_bytes());
    out.extend_from_slice(ca);
    wr.write_all(&out).await?;
    wr.flush().await
}

/// Writes the answer to a session's opening and flushes.
pub async fn opened<W: AsyncWrite + Unpin>(
    wr: &mut W,
    id: u64,
    received: u64,
) -> std::io::Result<()> {
    let mut out = vec![OPENED];
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&received.to_le_bytes());
    wr.write_all(&out).await?;
    wr.flush().await
}

/// The hub's answer to an opening, as the remote process reads it.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// A certificate and the authority's certificate (DER), and the key if the hub made
    /// it.
    Enrolled {
        /// This process's certificate.
        cert: Vec<u8>,
        /// The authority's.
        ca: Vec<u8>,
        /// The certificate's key (PKCS#8), when the request was empty.
        key: Option<Vec<u8>>,
    },
    /// The authority's certificate (DER).
    Authority(Vec<u8>),
    /// The session is open.
    Opened {
        /// Its id.
        id: u64,
        /// Bytes the hub received in it.
        received: u64,
    },
    /// Refused, with the hub's reason.
    Refused(String),
}

impl Answer {
    /// Reads the hub's answer.
    pub async fn read<R: AsyncRead + Unpin>(rd: &mut R) -> std::io::Result<Answer> {
        match rd.read_u8().await? {
            kind @ (ENROLLED | ENROLLED_WITH_KEY) => {
                let len = rd.read_u32_le().await? as usize;
                let cert = read_len(rd, len, MAX_DER, "a certificate").await?;
                let len = rd.read_u32_le().await? as usize;
                let ca = read_len(rd, len, MAX_DER, "a certificate").await?;
                let key = if kind == ENROLLED_WITH_KEY {
                    let len = rd.read_u32_le().await? as usize;
                    Some(read_len(rd, len, MAX_DER, "a key").await?)
                } else {
                    None
                };
                Ok(Answer::Enrolled { cert, ca, key })
            }
            AUTHORITY_IS => {
                let len = rd.read_u32_le().await? as usize;
                Ok(Answer::Authority(
                    read_len(rd, len, MAX_DER, "a certificate").await?,
                ))
            }
            OPENED => Ok(Answer::Opened {
                id: rd.read_u64_le().await?,
                received: rd.read_u64_le().await?,
            }),
            ENROL_REFUSED | SESSION_REFUSED => {
                let len = rd.read_u16_le().await? as usize;
                let msg = read_len(rd, len, MAX_MESSAGE, "a message").await?;
                Ok(Answer::Refused(String::from_utf8_lossy(&msg).into_owned()))
            }
            other => Err(invalid(format!("an unknown answer {other:#04x}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn openings_read_back() {
        for o in [
            Opening::Enrol {
                name: "gpu".into(),
                secret: "ab".repeat(32),
                request: vec![1, 2, 3],
            },
            Opening::Session {
                id: 7,
                received: 1 << 40,
            },
            Opening::Authority,
        ] {
            let bytes = o.encode();
            let back = Opening::read(&mut bytes.as_slice()).await.unwrap();
            assert_eq!(back, o);
        }
    }

    #[tokio::test]
    async fn bad_openings_are_errors_without_allocating_their_claims() {
        // An unknown kind, a request length beyond the limit, a cut record.
        let mut huge = vec![ENROL, 1, b'a', 0, 0];
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        for bad in [vec![0x16, 3, 1], huge, vec![SESSION, 1, 2]] {
            assert!(Opening::read(&mut bad.as_slice()).await.is_err());
        }
    }
}
