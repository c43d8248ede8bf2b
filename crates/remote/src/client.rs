//! The remote process's side: enrol once with a join token, then open a session with
//! the certificate obtained, and keep it: when a link breaks or falls silent, connect
//! again with backoff until the grace period passes.
//!
//! The certificate, its key and the authority's certificate are kept in a private state
//! directory (`0700`; the key `0600`), under the authority's fingerprint and the
//! process name, so that later runs of the process connect without a token.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::ClientConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::authority::{self, Identity};
use crate::opening::{Answer, Opening};
use crate::session::{LinkEnd, Session, SessionConfig};
use crate::token::JoinToken;
use crate::RemoteError;

/// The scheme of a hub's address: `yk://host:port`.
pub const SCHEME: &str = "yk://";

/// How a remote process joins.
#[derive(Debug, Clone)]
pub struct JoinConfig {
    /// Where certificates are kept (see [`default_state_dir`]).
    pub state_dir: PathBuf,
    /// Heartbeat, grace period and retention (the grace period should be the hub's).
    pub session: SessionConfig,
    /// Each connection attempt (TCP, TLS and the opening) must finish within this.
    pub connect_timeout: Duration,
}

impl Default for JoinConfig {
    fn default() -> Self {
        JoinConfig {
            state_dir: default_state_dir(),
            session: SessionConfig::default(),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// `$XDG_STATE_HOME/yukicomm/remote`, or `~/.local/state/yukicomm/remote`.
pub fn default_state_dir() -> PathBuf {
    authority::default_state_dir("remote")
}

/// The `host:port` of a `yk://host:port` address.
///
/// # Errors
///
/// When `url` is not of that form.
pub fn parse_url(url: &str) -> Result<String, RemoteError> {
    let bad = || {
        RemoteError::Address(format!(
            "'{url}' is not a hub address (expected yk://host:port)"
        ))
    };
    let rest = url
        .strip_prefix(SCHEME)
        .ok_or_else(bad)?
        .trim_end_matches('/');
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || port.parse::<u16>().is_err() || rest.contains('/') {
        return Err(bad());
    }
    Ok(rest.to_string())
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> RemoteError {
    move |source| RemoteError::Io { context, source }
}

/// Where the identity of `token`'s process is kept.
fn identity_dir(state_dir: &Path, token: &JoinToken) -> PathBuf {
    state_dir.join(&token.fingerprint[..16]).join(&token.name)
}

/// A TLS link to the hub at `addr` (`host:port`), checked with `config`.
///
/// # Errors
///
/// When the hub cannot be reached or the handshake fails.
pub async fn connect_tls(
    addr: &str,
    config: Arc<ClientConfig>,
) -> Result<TlsStream<TcpStream>, RemoteError> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(io(format!("cannot connect to the hub at {addr}")))?;
    let _ = tcp.set_nodelay(true);
    TlsConnector::from(config)
        .connect(crate::tls::hub_name(), tcp)
        .await
        .map_err(io(format!("TLS handshake with the hub at {addr}")))
}

async fn enrol(addr: &str, token: &JoinToken, dir: &Path) -> Result<Identity, RemoteError> {
    let config = crate::tls::client_config(&token.fingerprint, None)?;
    let mut link = connect_tls(addr, config).await?;
    let (key, request) = authority::new_request()?;
    let opening = Opening::Enrol {
        name: token.name.clone(),
        secret: token.secret().to_string(),
        request,
    };
    let ctx = format!("enrolment at {addr}");
    link.write_all(&opening.encode())
        .await
        .map_err(io(ctx.clone()))?;
    link.flush().await.map_err(io(ctx.clone()))?;
    let (cert, ca) = match Answer::read(&mut link).await.map_err(io(ctx))? {
        Answer::Enrolled {
            cert,
            ca,
            key: None,
        } => (cert, ca),
        Answer::Refused(why) => return Err(RemoteError::Enrolment(why)),
        _ => return Err(RemoteError::Enrolment("an unexpected answer".into())),
    };
    if authority::fingerprint(&ca) != token.fingerprint {
        return Err(RemoteError::Enrolment(
            "the hub sent an authority other than the one the token pins".into(),
        ));
    }
    authority::private_dir(dir)?;
    authority::write_key(&dir.join("key.pem"), &key.serialize_der())?;
    authority::write_cert(&dir.join("cert.pem"), &cert)?;
    authority::write_cert(&dir.join("ca.pem"), &ca)?;
    Ok(Identity {
        chain: vec![CertificateDer::from(cert)],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    })
}

/// This process's certificate: the one kept from an earlier enrolment, or a new one
/// obtained with the token.
async fn identity(
    addr: &str,
    token: &JoinToken,
    state_dir: &Path,
) -> Result<Identity, RemoteError> {
    let dir = identity_dir(state_dir, token);
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if cert.exists() && key.exists() {
        return Ok(Identity {
            chain: vec![authority::read_cert(&cert)?],
            key: authority::read_key(&key)?,
        });
    }
    enrol(addr, token, &dir).await
}

/// One link: connect, and open (`id` 0) or resume session `id`.
async fn open_link(
    addr: &str,
    config: Arc<ClientConfig>,
    id: u64,
    received: u64,
) -> Result<(TlsStream<TcpStream>, u64, u64), RemoteError> {
    let mut link = connect_tls(addr, config).await?;
    let ctx = format!("opening a session at {addr}");
    link.write_all(&Opening::Session { id, received }.encode())
        .await
        .map_err(io(ctx.clone()))?;
    link.flush().await.map_err(io(ctx.clone()))?;
    match Answer::read(&mut link).await.map_err(io(ctx))? {
        Answer::Opened { id, received } => Ok((link, id, received)),
        Answer::Refused(why) => Err(RemoteError::Refused(why)),
        _ => Err(RemoteError::Refused("an unexpected answer".into())),
    }
}

/// Joins the hub at `url` (`yk://host:port`) as the process `token` names: enrols if
/// this process has no certificate yet, opens a session, and returns the local end of
/// the session's stream, on which the connection engine says hello as to a local hub.
/// The session is kept by a task on the current tokio runtime (give it one of its own,
/// which user code does not block): it reconnects when a link breaks, and closes the
/// stream when the hub ends the session or none can be opened within the grace period.
///
/// # Errors
///
/// A bad address, an enrolment refused (token used, expired, for another name), the
/// hub unreachable or refusing the session.
pub async fn join(
    url: &str,
    token: &JoinToken,
    config: JoinConfig,
) -> Result<std::os::unix::net::UnixStream, RemoteError> {
    let addr = parse_url(url)?;
    let first = tokio::time::timeout(config.connect_timeout, async {
        let identity = identity(&addr, token, &config.state_dir).await?;
        let tls = crate::tls::client_config(&token.fingerprint, Some(&identity))?;
        let (link, id, hub_received) = open_link(&addr, tls.clone(), 0, 0).await?;
        Ok::<_, RemoteError>((tls, link, id, hub_received))
    })
    .await
    .map_err(|_| RemoteError::Io {
        context: format!("joining the hub at {addr}"),
        source: std::io::ErrorKind::TimedOut.into(),
    })??;
    let (tls, link, id, hub_received) = first;
    let (ours, theirs) =
        std::os::unix::net::UnixStream::pair().map_err(io("a socket pair".into()))?;
    ours.set_nonblocking(true)
        .map_err(io("a socket pair".into()))?;
    let ours = tokio::net::UnixStream::from_std(ours).map_err(io("a socket pair".into()))?;
    let session = Session::new(ours, config.session);
    tokio::spawn(keep(
        session,
        addr,
        tls,
        link,
        id,
        hub_received,
        config.connect_timeout,
    ));
    Ok(theirs)
}

/// Carries the session over links until it ends.
async fn keep(
    mut session: Session,
    addr: String,
    tls: Arc<ClientConfig>,
    first: TlsStream<TcpStream>,
    id: u64,
    hub_received: u64,
    connect_timeout: Duration,
) {
    let mut next = Some((first, hub_received));
    while let Some((link, peer_received)) = next.take() {
        match session
            .run_link(link, peer_received, std::future::pending::<()>())
            .await
        {
            LinkEnd::Closed | LinkEnd::Stopped(()) => return,
            LinkEnd::Lost(why) => {
                tracing::warn!(hub = %addr, "link to the hub lost: {why}; reconnecting")
            }
        }
        let lost_at = Instant::now();
        let grace = session.config().grace;
        let mut backoff = Duration::from_millis(50);
        while lost_at.elapsed() < grace {
            let attempt = tokio::time::timeout(
                connect_timeout.min(grace),
                open_link(&addr, tls.clone(), id, session.received()),
            )
            .await;
            match attempt {
                Ok(Ok((link, _, received))) => {
                    tracing::info!(hub = %addr, "link to the hub resumed");
                    next = Some((link, received));
                    break;
                }
                Ok(Err(RemoteError::Refused(why))) => {
                    tracing::warn!(hub = %addr, "the hub ended the session: {why}");
                    return;
                }
                Ok(Err(e)) => tracing::debug!(hub = %addr, "cannot reconnect: {e}"),
                Err(_) => tracing::debug!(hub = %addr, "cannot reconnect: timed out"),
            }
            tokio::time::sleep(backoff.min(grace.saturating_sub(lost_at.elapsed()))).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        if next.is_none() {
            tracing::warn!(hub = %addr, "no link to the hub for {} ms: leaving", grace.as_millis());
        }
    }
}
