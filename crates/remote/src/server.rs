//! The hub's side: a TCP listener whose every connection is TLS 1.3. A connection
//! without a client certificate may only enrol (redeem a join token for a certificate);
//! one with a certificate of the deployment's authority opens or resumes the session of
//! the process the certificate names. Nothing else gets an answer.
//!
//! A session's bytes end in a local stream the [`Host`] gives (the hub serves its other
//! end exactly as it serves a local child's connection), so a remote process is a full
//! participant and this module knows nothing of frames.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::Rng;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::authority::{name_of, Authority};
use crate::opening::{self, Opening};
use crate::session::{LinkEnd, Session, SessionConfig};
use crate::token::Tokens;
use crate::RemoteError;

/// What the hub does with sessions.
pub trait Host: Send + Sync + 'static {
    /// Process `name` opens a session: the local stream for it, or why not.
    fn open(&self, name: &str) -> Result<std::os::unix::net::UnixStream, String>;
    /// The session of `name` ended for good (its local stream is closed).
    fn closed(&self, name: &str);
}

/// The listener's limits.
#[derive(Debug, Clone, Copy)]
pub struct ListenConfig {
    /// A connection that has not finished its TLS handshake and its opening record in
    /// this time is closed.
    pub handshake_timeout: Duration,
    /// Connections in their handshake at once; more are closed at once.
    pub max_handshakes: usize,
    /// Sessions at once; more are refused.
    pub max_sessions: usize,
    /// Heartbeat, grace period and retention of each session.
    pub session: SessionConfig,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            handshake_timeout: Duration::from_secs(10),
            max_handshakes: 64,
            max_sessions: 1024,
            session: SessionConfig::default(),
        }
    }
}

type Link = TlsStream<TcpStream>;

enum Event {
    /// The process connected again: resume over this link.
    Link(Box<Link>, u64),
    /// A newer session of the same process replaces this one: end, then say so.
    End(oneshot::Sender<()>),
}

struct Entry {
    name: String,
    inbox: mpsc::Sender<Event>,
}

struct Shared {
    acceptor: TlsAcceptor,
    authority: Arc<Authority>,
    tokens: Arc<Tokens>,
    host: Arc<dyn Host>,
    config: ListenConfig,
    handshakes: Arc<Semaphore>,
    sessions: Mutex<HashMap<u64, Entry>>,
    tasks: Mutex<tokio::task::JoinSet<()>>,
}

/// A listening hub endpoint. Dropping it stops accepting and ends every session.
pub struct Listener {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

impl Listener {
    /// Listens on `addr`. Must be called inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// When the address cannot be bound or the TLS configuration cannot be made.
    pub async fn bind(
        addr: SocketAddr,
        authority: Arc<Authority>,
        tokens: Arc<Tokens>,
        host: Arc<dyn Host>,
        config: ListenConfig,
    ) -> Result<Listener, RemoteError> {
        let tls = crate::tls::server_config(authority.hub_identity(), authority.ca())?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| RemoteError::Io {
                context: format!("cannot listen on {addr}"),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| RemoteError::Io {
            context: "cannot read the listening address".into(),
            source,
        })?;
        let shared = Arc::new(Shared {
            acceptor: TlsAcceptor::from(tls),
            authority,
            tokens,
            host,
            config,
            handshakes: Arc::new(Semaphore::new(config.max_handshakes.max(1))),
            sessions: Mutex::new(HashMap::new()),
            tasks: Mutex::new(tokio::task::JoinSet::new()),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        tracing::info!(%addr, "listening for remote processes (TLS 1.3, mutual authentication)");
        Ok(Listener {
            addr,
            shared,
            accept,
        })
    }

    /// The address it listens on (with the port the system chose, if it was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The processes with a session, connected or within their grace period.
    pub fn sessions(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .shared
            .sessions
            .lock()
            .values()
            .map(|e| e.name.clone())
            .collect();
        names.sort();
        names
    }
}

impl Listener {
    /// Stops accepting, and waits up to `within` for the sessions to end (each ends when
    /// the hub closes its local stream, and tells its process so); the rest are cut.
    pub async fn close(self, within: Duration) {
        self.accept.abort();
        let deadline = tokio::time::Instant::now() + within;
        while !self.shared.sessions.lock().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.accept.abort();
        self.shared.tasks.lock().abort_all();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors, mostly: wait rather than spin.
                tracing::warn!("cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = shared.handshakes.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "too many handshakes at once: connection closed");
            continue;
        };
        let s = shared.clone();
        let mut tasks = shared.tasks.lock();
        // Finished tasks are reaped here, so the set holds only live ones.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(async move {
            let opened = tokio::time::timeout(s.config.handshake_timeout, handshake(&s, tcp)).await;
            drop(permit);
            match opened {
                Ok(Ok(Some((link, name, opening)))) => serve(s, link, name, opening, peer).await,
                Ok(Ok(None)) => {}
                Ok(Err(e)) => tracing::debug!(%peer, "connection refused: {e}"),
                Err(_) => {
                    tracing::debug!(%peer, "handshake not finished in time: connection closed")
                }
            }
        });
    }
}

/// The TLS handshake and the opening record. `None` once an enrolment is answered.
async fn handshake(
    s: &Arc<Shared>,
    tcp: TcpStream,
) -> std::io::Result<Option<(Link, Option<String>, Opening)>> {
    let _ = tcp.set_nodelay(true);
    let mut link = s.acceptor.accept(tcp).await?;
    let name = link
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(name_of);
    let opening = Opening::read(&mut link).await?;
    match &opening {
        Opening::Authority => {
            opening::authority(&mut link, s.authority.ca().as_ref()).await?;
        }
        Opening::Enrol { .. } if name.is_some() => {
            opening::refuse(
                &mut link,
                opening::ENROL_REFUSED,
                "already enrolled: connect without a certificate to enrol",
            )
            .await?;
        }
        Opening::Enrol {
            name: wanted,
            secret,
            request,
        } => {
            // An empty request: the hub makes the key (for clients that cannot).
            let issued = s.tokens.redeem(wanted, secret).and_then(|()| {
                if request.is_empty() {
                    s.authority
                        .issue_with_key(wanted)
                        .map(|(cert, key)| (cert, Some(key)))
                } else {
                    s.authority.issue(wanted, request).map(|cert| (cert, None))
                }
            });
            match issued {
                Ok((cert, key)) => {
                    tracing::info!(process = %wanted, "enrolled a remote process");
                    opening::enrolled(
                        &mut link,
                        cert.as_ref(),
                        s.authority.ca().as_ref(),
                        key.as_deref(),
                    )
                    .await?;
                }
                Err(e) => {
                    tracing::info!(process = ?wanted, "enrolment refused: {e}");
                    opening::refuse(&mut link, opening::ENROL_REFUSED, &e.to_string()).await?;
                }
            }
        }
        Opening::Session { .. } => return Ok(Some((link, name, opening))),
    }
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut link).await;
    Ok(None)
}

async fn serve(
    s: Arc<Shared>,
    mut link: Link,
    name: Option<String>,
    opening: Opening,
    peer: SocketAddr,
) {
    let Opening::Session { id, received } = opening else {
        return;
    };
    let Some(name) = name else {
        // No certificate: nothing but enrolment, and not even a refusal.
        tracing::debug!(%peer, "a session without a certificate: connection closed");
        return;
    };
    if id != 0 {
        let inbox = s
            .sessions
            .lock()
            .get(&id)
            .filter(|e| e.name == name)
            .map(|e| e.inbox.clone());
        match inbox {
            Some(inbox) => {
                if inbox
                    .send(Event::Link(Box::new(link), received))
                    .await
                    .is_err()
                {
                    tracing::debug!(process = %name, "the session ended as it resumed");
                }
            }
            None => {
                let _ = opening::refuse(
                    &mut link,
                    opening::SESSION_REFUSED,
                    "no such session (it ended)",
                )
                .await;
            }
        }
        return;
    }
    // A new session: an older one of the same process ends first.
    let older: Vec<mpsc::Sender<Event>> = s
        .sessions
        .lock()
        .values()
        .filter(|e| e.name == name)
        .map(|e| e.inbox.clone())
        .collect();
    for inbox in older {
        let (tx, rx) = oneshot::channel();
        if inbox.send(Event::End(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
    if s.sessions.lock().len() >= s.config.max_sessions {
        let _ = opening::refuse(
            &mut link,
            opening::SESSION_REFUSED,
            "too many remote processes",
        )
        .await;
        return;
    }
    let local = match s.host.open(&name) {
        Ok(l) => l,
        Err(why) => {
            tracing::info!(process = %name, "session refused: {why}");
            let _ = opening::refuse(&mut link, opening::SESSION_REFUSED, &why).await;
            return;
        }
    };
    let local = match local
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixStream::from_std(local))
    {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(process = %name, "cannot set up the session's stream: {e}");
            s.host.closed(&name);
            return;
        }
    };
    let id = loop {
        let id = rand::thread_rng().gen::<u64>();
        if id != 0 && !s.sessions.lock().contains_key(&id) {
            break id;
        }
    };
    let (tx, inbox) = mpsc::channel(4);
    s.sessions.lock().insert(
        id,
        Entry {
            name: name.clone(),
            inbox: tx,
        },
    );
    tracing::info!(process = %name, %peer, "a remote process joined");
    let session = Session::new(local, s.config.session);
    run_session(&s, id, &name, session, link, received, inbox).await;
}

async fn run_session(
    s: &Arc<Shared>,
    id: u64,
    name: &str,
    mut session: Session,
    first: Link,
    received: u64,
    mut inbox: mpsc::Receiver<Event>,
) {
    let mut next = Some((Box::new(first), received));
    let mut done = None;
    while let Some((mut link, peer_received)) = next.take() {
        if opening::opened(&mut link, id, session.received())
            .await
            .is_ok()
        {
            match session.run_link(link, peer_received, inbox.recv()).await {
                LinkEnd::Closed => break,
                LinkEnd::Lost(why) => tracing::info!(process = %name, "link lost: {why}"),
                LinkEnd::Stopped(Some(Event::Link(l, r))) => {
                    next = Some((l, r));
                    continue;
                }
                LinkEnd::Stopped(Some(Event::End(tx))) => {
                    done = Some(tx);
                    break;
                }
                LinkEnd::Stopped(None) => break,
            }
        }
        match tokio::time::timeout(session.config().grace, inbox.recv()).await {
            Ok(Some(Event::Link(l, r))) => {
                tracing::info!(process = %name, "link resumed");
                next = Some((l, r));
            }
            Ok(Some(Event::End(tx))) => done = Some(tx),
            Ok(None) => {}
            Err(_) => tracing::info!(
                process = %name,
                "no link for {} ms: the process is gone",
                session.config().grace.as_millis()
            ),
        }
    }
    s.sessions.lock().remove(&id);
    drop(session);
    s.host.closed(name);
    if let Some(tx) = done {
        let _ = tx.send(());
    }
}
