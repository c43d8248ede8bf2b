//! Join tokens: single use, expiring, naming one process, pinning the authority.
//!
//! A token is the text `yk1.NAME.SECRET.FINGERPRINT`: the process name, 32 random bytes
//! in hex, and the SHA-256 of the authority's certificate in hex. The hub keeps only a
//! digest of each secret, with the name and the expiry; redeeming a token removes it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::RngCore;

use crate::RemoteError;

/// A parsed join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// The process it admits.
    pub name: String,
    secret: String,
    /// The authority's fingerprint.
    pub fingerprint: String,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret: tokens must not reach logs.
        f.debug_struct("JoinToken")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl JoinToken {
    /// Parses a token's text.
    pub fn parse(text: &str) -> Result<JoinToken, RemoteError> {
        let bad = || {
            RemoteError::Enrolment("not a join token (expected yk1.NAME.SECRET.FINGERPRINT)".into())
        };
        let mut parts = text.trim().split('.');
        let (Some("yk1"), Some(name), Some(secret), Some(fp), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad());
        };
        if name.is_empty() || !is_hex(secret, 64) || !is_hex(fp, 64) {
            return Err(bad());
        }
        Ok(JoinToken {
            name: name.to_string(),
            secret: secret.to_ascii_lowercase(),
            fingerprint: fp.to_ascii_lowercase(),
        })
    }

    /// The token's text.
    pub fn text(&self) -> String {
        format!("yk1.{}.{}.{}", self.name, self.secret, self.fingerprint)
    }

    /// The secret part, which the joining side sends at enrolment.
    pub fn secret(&self) -> &str {
        &self.secret
    }
}

fn digest(secret: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, secret.as_bytes())
        .as_ref()
        .to_vec()
}

/// The tokens a hub issued and has not seen redeemed.
#[derive(Default)]
pub struct Tokens {
    issued: Mutex<HashMap<Vec<u8>, (String, Instant)>>,
}

impl Tokens {
    /// Issues a token for `name`, valid for `ttl`, pinning `fingerprint`.
    pub fn issue(&self, name: &str, ttl: Duration, fingerprint: &str) -> JoinToken {
        let mut raw = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut raw);
        let secret: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let now = Instant::now();
        let mut issued = self.issued.lock();
        issued.retain(|_, (_, expiry)| *expiry > now);
        issued.insert(digest(&secret), (name.to_string(), now + ttl));
        JoinToken {
            name: name.to_string(),
            secret,
            fingerprint: fingerprint.to_string(),
        }
    }

    /// Redeems the token whose secret is `secret` for `name`: it is spent whatever the
    /// outcome, unless it names another process.
    pub fn redeem(&self, name: &str, secret: &str) -> Result<(), RemoteError> {
        let key = digest(secret);
        let mut issued = self.issued.lock();
        let Some((for_name, expiry)) = issued.get(&key).cloned() else {
            return Err(RemoteError::Enrolment(
                "the join token is unknown or already used".into(),
            ));
        };
        if for_name != name {
            return Err(RemoteError::Enrolment(format!(
                "the join token is for another process than '{name}'"
            )));
        }
        issued.remove(&key);
        if expiry <= Instant::now() {
            return Err(RemoteError::Enrolment("the join token has expired".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn a_token_reads_back_and_is_spent_once() {
        let tokens = Tokens::default();
        let t = tokens.issue("gpu", Duration::from_secs(60), FP);
        let parsed = JoinToken::parse(&t.text()).unwrap();
        assert_eq!(parsed, t);
        assert!(!format!("{parsed:?}").contains(parsed.secret()));
        assert!(tokens.redeem("other", t.secret()).is_err(), "another name");
        assert!(tokens.redeem("gpu", t.secret()).is_ok());
        assert!(tokens.redeem("gpu", t.secret()).is_err(), "spent");
    }

    #[test]
    fn an_expired_token_is_refused() {
        let tokens = Tokens::default();
        let t = tokens.issue("gpu", Duration::ZERO, FP);
        assert!(tokens.redeem("gpu", t.secret()).is_err());
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for bad in [
            "",
            "yk1",
            "yk1.a.b.c",
            "yk2.a.00.11",
            &format!("yk1..{FP}.{FP}"),
        ] {
            assert!(JoinToken::parse(bad).is_err(), "{bad}");
        }
    }
}
