//! The hub's state and routing rules: channels, the registry, holders, queues and credit.
//!
//! All of it sits behind one mutex in [`Hub`](crate::Hub); every function here runs
//! with the lock held, never blocks, and returns the frames to send (with their connections) so that
//! nothing is written while the lock is held.
//!
//! Flow control counts messages and bytes (of message bodies). A process may have at
//! most `window` messages per channel end that the hub has not yet delivered, and may
//! send another only while fewer than `window_bytes` bytes are undelivered (the hub
//! returns credit as it delivers, in batches of half a window). A receiving process
//! grants the hub at most `window` messages and `window_bytes` bytes per end at a time,
//! and the hub delivers there only while the bytes it has delivered and not been
//! credited for are fewer than the grant. So the hub holds, per sending process and
//! channel end, at most `window` queued messages and `window_bytes` bytes plus one
//! message, whatever the processes do; that includes what waits for a child that is
//! being restarted.

use std::collections::{HashMap, VecDeque};

use rustc_hash::{FxHashMap, FxHashSet};

use bytes::Bytes;
use std::time::Instant;

use crate::services::Services;
use yukicomm_wire::{
    abbreviate, ChanId, ChannelInfo, ChannelName, ControlAction, End, EndRef, ErrorCode, Event,
    Frame, Msg, Notice, Reply, Request, MAX_TYPE_NAME,
};

/// A connection's number in the hub. [`LOCAL`] is the main process itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// The main process's own connection.
pub const LOCAL: ConnId = ConnId(0);

/// Holds the ends carried by queued messages, so that an end in transit between two
/// processes is never seen as abandoned.
const TRANSIT: ConnId = ConnId(u64::MAX);

/// Holds a child's own ends (`NAME-active`, `NAME-passive`, end `A`) between the death
/// of one of its processes and the start of the next, so that a restart is not seen as a
/// disconnection. Released by [`Router::child_gone`] when the child stops for good.
const SUPERVISED: ConnId = ConnId(u64::MAX - 1);

/// A frame to send to a connection once the lock is released.
pub(crate) type Out = (ConnId, Frame);

/// Who created a channel: that party gets end `A` from a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Creator {
    Conn(ConnId),
    Child(String),
}

struct Queued {
    from: ConnId,
    from_end: End,
    /// The sender's epoch for its end when it sent this (see `ConnState::epochs`).
    epoch: u32,
    body: Bytes,
    carried: Vec<EndRef>,
}

/// A process receiving at an end, with the credit it has granted.
#[derive(Debug, Clone, Copy)]
struct Receiver {
    conn: ConnId,
    /// Messages the hub may still deliver.
    msgs: u32,
    /// Bytes the hub may still deliver: it delivers while this is positive, so one
    /// message may take it below zero.
    bytes: i64,
}

#[derive(Default)]
struct EndRoute {
    /// Processes holding this end, with how many grants each has not released.
    holders: FxHashMap<ConnId, u32>,
    ever_held: bool,
    /// Processes receiving at this end.
    receivers: Vec<Receiver>,
    next: usize,
    /// Messages to this end waiting for a receiver with credit.
    queue: VecDeque<Queued>,
    /// The connection whose message was delivered here last.
    last_from: Option<ConnId>,
    /// The other end's holders are gone while messages they sent are still queued
    /// here: once the queue is empty, the holders of this end get a final `PeerGone`.
    peer_gone_queued: bool,
    /// The channel closed while messages were still queued here: once the queue is
    /// empty, the holders of this end get a final `Closed`.
    close_queued: bool,
}

impl EndRoute {
    /// The index of the next receiver, round robin, for a message from `from` (a
    /// process never receives its own message) that has credit for it; once the
    /// channel is closed, credit is not needed.
    fn next_receiver(&self, from: ConnId, closed: bool) -> Option<usize> {
        let n = self.receivers.len();
        (0..n).map(|i| (self.next + i) % n).find(|&i| {
            let r = &self.receivers[i];
            r.conn != from && ((r.msgs > 0 && r.bytes > 0) || closed)
        })
    }

    /// Takes the credit of a message of `size` bytes from receiver `idx`.
    fn take_credit(&mut self, idx: usize, size: usize) -> ConnId {
        self.next = idx + 1;
        let r = &mut self.receivers[idx];
        r.msgs = r.msgs.saturating_sub(1);
        r.bytes = r.bytes.saturating_sub(size as i64);
        r.conn
    }

    /// The next receiver for a message of `size` bytes from `from`, taking its credit.
    fn take_receiver(&mut self, from: ConnId, closed: bool, size: usize) -> Option<ConnId> {
        let idx = self.next_receiver(from, closed)?;
        Some(self.take_credit(idx, size))
    }
}

struct Chan {
    type_name: String,
    name: Option<String>,
    creator: Creator,
    closed: bool,
    /// A child's own `NAME-active` or `NAME-passive` channel: named for good, and
    /// reopened for each new process of the child.
    own: bool,
    /// Routes by the end messages go *to*.
    ends: [EndRoute; 2],
}

impl Chan {
    fn label(&self, id: ChanId) -> String {
        self.name.clone().unwrap_or_else(|| id.to_string())
    }
}

#[derive(Default)]
struct ConnState {
    child: Option<String>,
    holds: FxHashSet<EndRef>,
    /// Per end this connection sends from.
    sending: FxHashMap<EndRef, Sending>,
}

/// The credit accounting of one end a connection sends from.
#[derive(Default)]
struct Sending {
    /// Bumped each time the connection releases the end. A process that gets an end
    /// again starts with a fresh window, so messages it sent before do not earn it
    /// credit any more.
    epoch: u32,
    /// Messages received and not yet credited back.
    outstanding: u32,
    /// Bytes received and not yet credited back.
    outstanding_bytes: u64,
    /// Delivered messages whose credit is not yet returned.
    owed: u32,
    /// Bytes of delivered messages whose credit is not yet returned.
    owed_bytes: u64,
}

/// A child the supervisor announced.
pub(crate) struct ChildEntry {
    pub(crate) token: String,
    pub(crate) active: ChanId,
    pub(crate) passive: ChanId,
    pub(crate) conn: Option<ConnId>,
    /// A restart was requested and its process has not said hello yet.
    pub(crate) restart_requested: bool,
    /// It joins from another machine: nobody here starts or stops its process.
    pub(crate) remote: bool,
    /// The supervisor gave up on the child: when its connection closes, its own ends
    /// are not kept held.
    gone: bool,
}

/// What the supervisor must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubEvent {
    /// A child asked, or was asked, to be restarted or stopped.
    Control {
        /// What to do.
        action: ControlAction,
        /// The child.
        name: String,
    },
    /// A child's connection was accepted.
    Connected {
        /// The child.
        name: String,
    },
    /// A child's connection closed.
    Disconnected {
        /// The child.
        name: String,
    },
}

pub(crate) struct Router {
    window: u32,
    window_bytes: u64,
    chans: FxHashMap<ChanId, Chan>,
    next_chan: u32,
    names: HashMap<String, ChanId>,
    conns: FxHashMap<ConnId, ConnState>,
    pub(crate) children: HashMap<String, ChildEntry>,
    pub(crate) events: Vec<HubEvent>,
    /// Who serves what, and the calls in progress (see [`crate::services`]).
    services: Services,
}

fn refused(chan: Option<ChanId>, code: ErrorCode, message: String) -> Frame {
    Frame::Event(Event::Refused {
        chan,
        code,
        message,
    })
}

/// Sends `event` about `key` to every holder of the opposite end.
fn tell_other_end(chan: &Chan, key: EndRef, event: Event, out: &mut Vec<Out>) {
    for &c in chan.ends[key.end.opposite().index()].holders.keys() {
        out.push((c, Frame::Event(event.clone())));
    }
}

/// Returns the credit of a message of `size` bytes the hub refused before counting it.
fn give_back(from: EndRef, size: usize) -> Frame {
    Frame::Credit {
        chan: from.chan,
        end: from.end,
        n: 1,
        bytes: size as u64,
    }
}

fn error(code: ErrorCode, message: String) -> Reply {
    Reply::Error { code, message }
}

/// Channel numbers kept for the children the supervisor announces: `create` stops short
/// of them, so numbers never wrap around to channels in use.
const RESERVED_CHANS: u32 = 1 << 16;

/// Refuses a request whose fields are beyond what the hub keeps, before it is handled.
fn check_request(req: &Request) -> Result<(), Reply> {
    match req {
        Request::Create { type_name, .. } | Request::Lookup { type_name, .. }
            if type_name.len() > MAX_TYPE_NAME =>
        {
            Err(error(
                ErrorCode::BadRequest,
                format!(
                    "type name of {} bytes exceeds the limit of {MAX_TYPE_NAME} bytes",
                    type_name.len()
                ),
            ))
        }
        _ => Ok(()),
    }
}

impl Router {
    pub(crate) fn new(window: u32, window_bytes: u64) -> Router {
        let mut r = Router {
            window: window.max(1),
            window_bytes: window_bytes.clamp(1, i64::MAX as u64),
            chans: FxHashMap::default(),
            next_chan: 1,
            names: HashMap::new(),
            conns: FxHashMap::default(),
            children: HashMap::new(),
            events: Vec::new(),
            services: Services::default(),
        };
        r.conns.insert(LOCAL, ConnState::default());
        r
    }

    pub(crate) fn window(&self) -> u32 {
        self.window
    }

    pub(crate) fn window_bytes(&self) -> u64 {
        self.window_bytes
    }

    fn new_chan(&mut self, type_name: String, creator: Creator) -> ChanId {
        let id = ChanId(self.next_chan);
        // `create` stops RESERVED_CHANS short of the end (see `request`).
        self.next_chan = self.next_chan.saturating_add(1);
        self.chans.insert(
            id,
            Chan {
                type_name,
                name: None,
                creator,
                closed: false,
                own: false,
                ends: Default::default(),
            },
        );
        id
    }

    /// Announces a child: creates its `NAME-active` and `NAME-passive` channels.
    pub(crate) fn add_child(&mut self, name: &yukicomm_wire::ProcessName, token: String) {
        if let Some(c) = self.children.get_mut(name.as_str()) {
            c.token = token;
            return;
        }
        let mut ids = [ChanId(0); 2];
        for (i, chan_name) in [name.active_channel(), name.passive_channel()]
            .into_iter()
            .enumerate()
        {
            let id = self.new_chan(String::new(), Creator::Child(name.to_string()));
            if let Some(c) = self.chans.get_mut(&id) {
                c.name = Some(chan_name.to_string());
                c.own = true;
            }
            self.names.insert(chan_name.to_string(), id);
            ids[i] = id;
        }
        self.children.insert(
            name.to_string(),
            ChildEntry {
                token,
                active: ids[0],
                passive: ids[1],
                conn: None,
                restart_requested: false,
                remote: false,
                gone: false,
            },
        );
    }

    /// Gives a child a new token (for its next start) and returns it.
    pub(crate) fn set_token(&mut self, name: &str, token: String) {
        if let Some(c) = self.children.get_mut(name) {
            c.token = token;
        }
    }

    /// Checks a `Hello` and registers the connection. Returns the welcome, and the
    /// connection the child had before, if it is still open.
    pub(crate) fn hello(
        &mut self,
        conn: ConnId,
        version: u32,
        name: &str,
        token: &str,
        max_frame: u32,
        out: &mut Vec<Out>,
    ) -> Result<(Reply, Option<ConnId>), Reply> {
        if version != yukicomm_wire::PROTOCOL_VERSION {
            return Err(error(
                ErrorCode::UnsupportedVersion,
                format!(
                    "protocol version {version} is not supported (this hub speaks {})",
                    yukicomm_wire::PROTOCOL_VERSION
                ),
            ));
        }
        let Some(child) = self.children.get_mut(name) else {
            return Err(error(
                ErrorCode::Unauthorized,
                format!("no child process named '{}'", abbreviate(name)),
            ));
        };
        if child.token.is_empty() || child.token != token {
            return Err(error(
                ErrorCode::Unauthorized,
                format!("wrong token for child process '{name}'"),
            ));
        }
        // A token admits one connection.
        child.token.clear();
        child.restart_requested = false;
        child.gone = false;
        let old = child.conn.replace(conn);
        let (active, passive) = (child.active, child.passive);
        self.conns.insert(
            conn,
            ConnState {
                child: Some(name.to_string()),
                ..Default::default()
            },
        );
        for chan in [active, passive] {
            if let Some(c) = self.chans.get_mut(&chan) {
                c.closed = false;
            }
            let key = EndRef { chan, end: End::A };
            self.add_hold(conn, key, 1, out);
            self.drop_hold(SUPERVISED, key, None, out);
        }
        self.events.push(HubEvent::Connected {
            name: name.to_string(),
        });
        Ok((
            Reply::Welcome {
                name: name.to_string(),
                window: self.window,
                window_bytes: self.window_bytes,
                max_frame,
                active,
                passive,
            },
            old,
        ))
    }

    fn add_hold(&mut self, conn: ConnId, key: EndRef, grants: u32, out: &mut Vec<Out>) {
        let Some(chan) = self.chans.get_mut(&key.chan) else {
            return;
        };
        let route = &mut chan.ends[key.end.index()];
        let was_empty = route.holders.is_empty();
        let held = route.holders.entry(conn).or_insert(0);
        *held = held.saturating_add(grants);
        let came_back = was_empty && route.ever_held;
        route.ever_held = true;
        if came_back {
            chan.ends[key.end.opposite().index()].peer_gone_queued = false;
            tell_other_end(
                chan,
                key,
                Event::PeerBack {
                    chan: key.chan,
                    end: key.end,
                },
                out,
            );
        }
        if let Some(cs) = self.conns.get_mut(&conn) {
            cs.holds.insert(key);
        }
    }

    /// Removes `grants` of `conn`'s hold on `key` (all of them if `None`).
    fn drop_hold(&mut self, conn: ConnId, key: EndRef, grants: Option<u32>, out: &mut Vec<Out>) {
        let Some(chan) = self.chans.get_mut(&key.chan) else {
            return;
        };
        let route = &mut chan.ends[key.end.index()];
        let Some(held) = route.holders.get_mut(&conn) else {
            return;
        };
        match grants {
            Some(n) if n < *held => {
                *held -= n;
                return;
            }
            _ => {}
        }
        route.holders.remove(&conn);
        route.receivers.retain(|r| r.conn != conn);
        if let Some(cs) = self.conns.get_mut(&conn) {
            cs.holds.remove(&key);
            let s = cs.sending.entry(key).or_default();
            s.epoch = s.epoch.wrapping_add(1);
            s.outstanding = 0;
            s.outstanding_bytes = 0;
            s.owed = 0;
            s.owed_bytes = 0;
        }
        if chan.ends[key.end.index()].holders.is_empty() {
            // What the gone holders sent is delivered before the last word that they
            // are gone (see `drain`).
            let to = &mut chan.ends[key.end.opposite().index()];
            let queued = !to.queue.is_empty();
            to.peer_gone_queued = queued;
            tell_other_end(
                chan,
                key,
                Event::PeerGone {
                    chan: key.chan,
                    end: key.end,
                    queued,
                },
                out,
            );
        }
        self.collect(key.chan, out);
    }

    /// Frees an unnamed channel nobody holds. Nobody can take one of its ends again
    /// (an end in a queued message is held in transit), so what is queued on it can
    /// never be delivered: it goes too, with the transit holds of the ends it carries.
    fn collect(&mut self, id: ChanId, out: &mut Vec<Out>) {
        let Some(chan) = self.chans.get(&id) else {
            return;
        };
        let unused = chan.name.is_none() && chan.ends.iter().all(|r| r.holders.is_empty());
        if !unused {
            return;
        }
        let Some(chan) = self.chans.remove(&id) else {
            return;
        };
        for route in chan.ends {
            for q in route.queue {
                for k in q.carried {
                    self.drop_hold(TRANSIT, k, Some(1), out);
                }
            }
        }
    }

    /// The child will not be started again (stopped, failed, or not to be restarted):
    /// its own ends are no longer held, and whoever waits on them is told.
    pub(crate) fn child_gone(&mut self, name: &str, out: &mut Vec<Out>) {
        let Some(child) = self.children.get_mut(name) else {
            return;
        };
        // A restart requested meanwhile keeps the channels connected.
        if child.restart_requested {
            return;
        }
        child.gone = true;
        self.services.child_gone(name, Instant::now(), out);
        let Some(child) = self.children.get(name) else {
            return;
        };
        // The connection of the dead process may not be closed yet: its closing
        // releases the ends then.
        if child.conn.is_some() {
            return;
        }
        for chan in [child.active, child.passive] {
            self.drop_hold(SUPERVISED, EndRef { chan, end: End::A }, None, out);
        }
    }

    /// A connection closed: it holds nothing any more.
    pub(crate) fn drop_conn(&mut self, conn: ConnId, out: &mut Vec<Out>) {
        let Some(cs) = self.conns.get(&conn) else {
            return;
        };
        if let Some(child) = cs.child.as_ref().and_then(|n| self.children.get(n)) {
            if child.conn == Some(conn) && !child.gone {
                for chan in [child.active, child.passive] {
                    self.add_hold(SUPERVISED, EndRef { chan, end: End::A }, 1, out);
                }
            }
        }
        let Some(cs) = self.conns.remove(&conn) else {
            return;
        };
        // Calls to the services of a child the supervisor has not given up on wait for
        // its next process.
        let returning = cs
            .child
            .as_deref()
            .filter(|n| self.children.get(*n).is_some_and(|c| !c.gone));
        self.services
            .drop_conn(conn, returning, Instant::now(), out);
        // Re-insert a bare entry so that drop_hold can update it, then remove it.
        self.conns.insert(conn, ConnState::default());
        for key in cs.holds {
            self.drop_hold(conn, key, None, out);
        }
        self.conns.remove(&conn);
        out.retain(|(c, _)| *c != conn);
        if let Some(name) = cs.child {
            if let Some(child) = self.children.get_mut(&name) {
                if child.conn == Some(conn) {
                    child.conn = None;
                    self.events.push(HubEvent::Disconnected { name });
                }
            }
        }
    }

    /// Handles one frame from `conn`. Returns a reason to close the connection when the
    /// peer broke the protocol.
    pub(crate) fn frame(
        &mut self,
        conn: ConnId,
        frame: Frame,
        out: &mut Vec<Out>,
    ) -> Result<(), String> {
        match frame {
            Frame::Msg(m) => self.msg(conn, m, out),
            Frame::Credit {
                chan,
                end,
                n,
                bytes,
            } => {
                if let Some(c) = self.chans.get_mut(&chan) {
                    let route = &mut c.ends[end.index()];
                    if let Some(r) = route.receivers.iter_mut().find(|r| r.conn == conn) {
                        // A receiver never has more room than a window: more is a
                        // miscount, and must not let it be flooded.
                        r.msgs = r.msgs.saturating_add(n).min(self.window);
                        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
                        r.bytes = r.bytes.saturating_add(bytes).min(self.window_bytes as i64);
                    }
                    self.drain(chan, end, out);
                }
                Ok(())
            }
            Frame::Request { id, body } => {
                let reply = match check_request(&body) {
                    Ok(()) => self.request(conn, body, out),
                    Err(refusal) => refusal,
                };
                out.push((conn, Frame::Reply { id, body: reply }));
                Ok(())
            }
            Frame::Notice(n) => {
                self.notice(conn, n, out);
                Ok(())
            }
            Frame::Call(call) => {
                self.services.call(conn, call, Instant::now(), out);
                Ok(())
            }

            Frame::CallReply { id, status, body } => {
                self.services
                    .reply(conn, id, status, body, Instant::now(), out);
                Ok(())
            }
            Frame::Cancel { id } => {
                self.services.cancel(conn, id, Instant::now(), out);
                Ok(())
            }
            Frame::Op { .. } => Err("a store operation reached the router".into()),
            Frame::Reply { .. } | Frame::Event(_) | Frame::OpReply { .. } | Frame::Delivery(_) => {
                Err("a process sent a frame only the hub sends".into())
            }
        }
    }

    fn msg(&mut self, conn: ConnId, m: Msg, out: &mut Vec<Out>) -> Result<(), String> {
        let from = EndRef {
            chan: m.chan,
            end: m.to.opposite(),
        };
        let size = m.body.len();
        let Some(chan) = self.chans.get(&m.chan) else {
            out.push((
                conn,
                refused(
                    Some(m.chan),
                    ErrorCode::UnknownChannel,
                    format!("no channel {}", m.chan),
                ),
            ));
            out.push((conn, give_back(from, size)));
            return Ok(());
        };
        if !chan.ends[from.end.index()].holders.contains_key(&conn) {
            let label = chan.label(m.chan);
            out.push((
                conn,
                refused(
                    Some(m.chan),
                    ErrorCode::BadRequest,
                    format!("channel '{label}': this process does not hold the sending end"),
                ),
            ));
            out.push((conn, give_back(from, size)));
            return Ok(());
        }
        let (window, window_bytes) = (self.window, self.window_bytes);
        let cs = self.conns.entry(conn).or_default();
        let sending = cs.sending.entry(from).or_default();
        let epoch = sending.epoch;
        // The main process accounts for its own window; a child that overruns its
        // window breaks the protocol.
        if conn != LOCAL && sending.outstanding_bytes >= window_bytes {
            return Err(format!(
                "channel {}: a message sent with {} bytes in flight (the window is {window_bytes})",
                m.chan, sending.outstanding_bytes
            ));
        }
        sending.outstanding = sending.outstanding.saturating_add(1);
        sending.outstanding_bytes = sending.outstanding_bytes.saturating_add(size as u64);
        if sending.outstanding > window {
            return Err(format!(
                "channel {}: more than {window} messages in flight",
                m.chan
            ));
        }
        if let Some(k) = m.carried.iter().find(|k| !self.holds(conn, **k)) {
            out.push((
                conn,
                refused(
                    Some(m.chan),
                    ErrorCode::BadRequest,
                    format!(
                        "the message carries channel {} which this process does not hold",
                        k.chan
                    ),
                ),
            ));
            self.credit_back(conn, from, epoch, size, out);
            return Ok(());
        }
        let chan = self.chans.get_mut(&m.chan).expect("checked above");
        if chan.closed {
            let label = chan.label(m.chan);
            out.push((
                conn,
                refused(
                    Some(m.chan),
                    ErrorCode::Closed,
                    format!("channel '{label}' is closed"),
                ),
            ));
            self.credit_back(conn, from, epoch, size, out);
            return Ok(());
        }
        let route = &mut chan.ends[m.to.index()];
        // Nothing queued ahead of it and a receiver with credit: no need to queue it.
        if route.queue.is_empty() && m.carried.is_empty() {
            if let Some(receiver) = route.take_receiver(conn, false, size) {
                route.last_from = Some(conn);
                out.push((receiver, Frame::Msg(m)));
                self.credit_back(conn, from, epoch, size, out);
                return Ok(());
            }
        }
        route.queue.push_back(Queued {
            from: conn,
            from_end: from.end,
            epoch,
            body: m.body,
            carried: m.carried.clone(),
        });
        for k in m.carried {
            self.add_hold(TRANSIT, k, 1, out);
        }
        self.drain(m.chan, m.to, out);
        Ok(())
    }

    /// The receiver a message from `conn` on `chan` to `to` would go to right now, if
    /// it can go there directly: nothing queued ahead of it, and a child receiving
    /// there with credit. Changes nothing; see [`Router::delivered_direct`].
    pub(crate) fn direct_target(&self, conn: ConnId, chan: ChanId, to: End) -> Option<ConnId> {
        let c = self.chans.get(&chan)?;
        if c.closed || !c.ends[to.opposite().index()].holders.contains_key(&conn) {
            return None;
        }
        let route = &c.ends[to.index()];
        if !route.queue.is_empty() {
            return None;
        }
        let idx = route.next_receiver(conn, false)?;
        Some(route.receivers[idx].conn).filter(|&r| r != LOCAL)
    }

    /// Whether `conn` holds `key`.
    pub(crate) fn holds_end(&self, conn: ConnId, key: EndRef) -> bool {
        self.holds(conn, key)
    }

    /// Accounts for message `m` from `conn` that was written straight to `receiver` (as
    /// [`Router::direct_target`] chose).
    pub(crate) fn delivered_direct(
        &mut self,
        conn: ConnId,
        m: &Msg,
        receiver: ConnId,
        out: &mut Vec<Out>,
    ) {
        let (chan, to, size) = (m.chan, m.to, m.body.len());
        let from = EndRef {
            chan,
            end: to.opposite(),
        };
        let cs = self.conns.entry(conn).or_default();
        let sending = cs.sending.entry(from).or_default();
        let epoch = sending.epoch;
        sending.outstanding = sending.outstanding.saturating_add(1);
        sending.outstanding_bytes = sending.outstanding_bytes.saturating_add(size as u64);
        if let Some(c) = self.chans.get_mut(&chan) {
            let route = &mut c.ends[to.index()];
            if let Some(idx) = route.receivers.iter().position(|r| r.conn == receiver) {
                route.take_credit(idx, size);
            }
            route.last_from = Some(conn);
        }
        for &k in &m.carried {
            self.add_hold(receiver, k, 1, out);
        }
        self.credit_back(conn, from, epoch, size, out);
    }

    /// Delivers queued messages for `end` to receivers with credit, round robin.
    fn drain(&mut self, id: ChanId, end: End, out: &mut Vec<Out>) {
        loop {
            let Some(chan) = self.chans.get_mut(&id) else {
                return;
            };
            let closed = chan.closed;
            let route = &mut chan.ends[end.index()];
            let Some(front) = route.queue.front() else {
                if std::mem::take(&mut route.close_queued) {
                    for &c in route.holders.keys() {
                        out.push((
                            c,
                            Frame::Event(Event::Closed {
                                chan: id,
                                queued: false,
                            }),
                        ));
                    }
                }
                if std::mem::take(&mut route.peer_gone_queued) {
                    let gone = EndRef {
                        chan: id,
                        end: end.opposite(),
                    };
                    let event = Event::PeerGone {
                        chan: id,
                        end: gone.end,
                        queued: false,
                    };
                    tell_other_end(chan, gone, event, out);
                }
                return;
            };
            let Some(receiver) = route.take_receiver(front.from, closed, front.body.len()) else {
                return;
            };
            let q = route.queue.pop_front().expect("front checked above");
            let size = q.body.len();
            route.last_from = Some(q.from);
            for &k in &q.carried {
                self.add_hold(receiver, k, 1, out);
                self.drop_hold(TRANSIT, k, Some(1), out);
            }
            let from = EndRef {
                chan: id,
                end: q.from_end,
            };
            out.push((
                receiver,
                Frame::Msg(Msg {
                    chan: id,
                    to: end,
                    carried: q.carried,
                    body: q.body,
                }),
            ));
            self.credit_back(q.from, from, q.epoch, size, out);
        }
    }

    /// Counts one delivered message of `size` bytes of `conn` sent from `from`,
    /// returning credit in batches of half a window (in messages or in bytes).
    fn credit_back(
        &mut self,
        conn: ConnId,
        from: EndRef,
        epoch: u32,
        size: usize,
        out: &mut Vec<Out>,
    ) {
        let half = (self.window / 2).max(1);
        let half_bytes = (self.window_bytes / 2).max(1);
        let Some(cs) = self.conns.get_mut(&conn) else {
            return;
        };
        let s = cs.sending.entry(from).or_default();
        if s.epoch != epoch {
            return;
        }
        s.owed = s.owed.saturating_add(1);
        s.owed_bytes = s.owed_bytes.saturating_add(size as u64);
        if s.owed >= half || s.owed_bytes >= half_bytes {
            let n = std::mem::take(&mut s.owed);
            let bytes = std::mem::take(&mut s.owed_bytes);
            s.outstanding = s.outstanding.saturating_sub(n);
            s.outstanding_bytes = s.outstanding_bytes.saturating_sub(bytes);
            out.push((
                conn,
                Frame::Credit {
                    chan: from.chan,
                    end: from.end,
                    n,
                    bytes,
                },
            ));
        }
    }

    fn notice(&mut self, conn: ConnId, notice: Notice, out: &mut Vec<Out>) {
        match notice {
            Notice::Attach {
                chan,
                end,
                credit,
                bytes,
            } => {
                let Some(c) = self.chans.get_mut(&chan) else {
                    return;
                };
                let route = &mut c.ends[end.index()];
                if !route.holders.contains_key(&conn) {
                    return;
                }
                let msgs = credit.min(self.window);
                let bytes = bytes.min(self.window_bytes) as i64;
                match route.receivers.iter_mut().find(|r| r.conn == conn) {
                    Some(r) => {
                        r.msgs = msgs;
                        r.bytes = bytes;
                    }
                    None => route.receivers.push(Receiver { conn, msgs, bytes }),
                }
                self.drain(chan, end, out);
            }
            Notice::Release { chan, end, count } => {
                self.drop_hold(conn, EndRef { chan, end }, Some(count), out)
            }
            Notice::Close { chan } => self.close(conn, chan, out),
        }
    }

    fn close(&mut self, conn: ConnId, id: ChanId, out: &mut Vec<Out>) {
        let Some(chan) = self.chans.get_mut(&id) else {
            return;
        };
        let holds = chan.ends.iter().any(|r| r.holders.contains_key(&conn));
        if !holds || chan.closed {
            return;
        }
        chan.closed = true;
        if !chan.own {
            // The name is free again; a child's own channels keep theirs and reopen
            // with its next process.
            if let Some(name) = chan.name.take() {
                self.names.remove(&name);
            }
        }
        // Deliver what is queued to whoever receives, regardless of credit, so that the
        // close is seen after every message. What is left has no receiver yet: it goes
        // to the first to receive, and its end's holders hear of the close twice (see
        // `drain`).
        self.drain(id, End::A, out);
        self.drain(id, End::B, out);
        let Some(chan) = self.chans.get_mut(&id) else {
            return;
        };
        let mut all: Vec<(ConnId, bool)> = Vec::new();
        for route in &mut chan.ends {
            route.close_queued = !route.queue.is_empty();
            all.extend(route.holders.keys().map(|&c| (c, route.close_queued)));
        }
        // One `Closed` per process; `queued` if any end it holds has messages waiting.
        all.sort();
        all.dedup_by(|later, first| {
            let same = later.0 == first.0;
            if same {
                first.1 |= later.1;
            }
            same
        });
        for (c, queued) in all {
            out.push((c, Frame::Event(Event::Closed { chan: id, queued })));
        }
    }

    /// A call from the main process; returns the connection it went to, if it went to
    /// one at once.
    pub(crate) fn local_call(
        &mut self,
        call: yukicomm_wire::call::Call,
        out: &mut Vec<Out>,
    ) -> Option<ConnId> {
        self.services.call(LOCAL, call, Instant::now(), out)
    }

    /// The connection that last sent a message delivered at `key`.
    pub(crate) fn last_sender(&self, key: EndRef) -> Option<ConnId> {
        self.chans.get(&key.chan)?.ends[key.end.index()].last_from
    }

    fn holds(&self, conn: ConnId, key: EndRef) -> bool {
        self.chans
            .get(&key.chan)
            .is_some_and(|c| c.ends[key.end.index()].holders.contains_key(&conn))
    }

    fn creator_of(&self, conn: ConnId) -> Creator {
        match self.conns.get(&conn).and_then(|c| c.child.clone()) {
            Some(name) => Creator::Child(name),
            None => Creator::Conn(conn),
        }
    }

    fn request(&mut self, conn: ConnId, req: Request, out: &mut Vec<Out>) -> Reply {
        match req {
            Request::Hello { .. } => error(
                ErrorCode::BadRequest,
                "hello is only valid as the first frame".into(),
            ),
            Request::Create { type_name, pair } => {
                if self.next_chan > u32::MAX - RESERVED_CHANS {
                    return error(
                        ErrorCode::BadRequest,
                        "the hub has no channel numbers left".into(),
                    );
                }
                let creator = self.creator_of(conn);
                let chan = self.new_chan(type_name, creator);
                self.add_hold(conn, EndRef { chan, end: End::A }, 1, out);
                if pair {
                    self.add_hold(conn, EndRef { chan, end: End::B }, 1, out);
                }
                Reply::Created { chan }
            }
            Request::Register { name, chan } => {
                let name = match ChannelName::new(&name) {
                    Ok(n) => n,
                    Err(e) => return error(ErrorCode::InvalidName, e.to_string()),
                };
                if self.names.contains_key(name.as_str()) {
                    return error(
                        ErrorCode::NameTaken,
                        format!("a channel named '{name}' is already registered"),
                    );
                }
                if ![End::A, End::B]
                    .iter()
                    .any(|&end| self.holds(conn, EndRef { chan, end }))
                {
                    return error(
                        ErrorCode::BadRequest,
                        format!("cannot name channel {chan}: this process does not hold it"),
                    );
                }
                let Some(c) = self.chans.get_mut(&chan) else {
                    return error(ErrorCode::UnknownChannel, format!("no channel {chan}"));
                };
                if c.closed {
                    return error(ErrorCode::Closed, format!("channel {chan} is closed"));
                }
                if let Some(old) = &c.name {
                    return error(
                        ErrorCode::NameTaken,
                        format!("channel {chan} is already registered as '{old}'"),
                    );
                }
                c.name = Some(name.to_string());
                self.names.insert(name.to_string(), chan);
                Reply::Done
            }
            Request::Lookup { name, type_name } => {
                let Some(&id) = self.names.get(&name) else {
                    return error(
                        ErrorCode::UnknownChannel,
                        format!("no channel named '{}'", abbreviate(&name)),
                    );
                };
                let me = self.creator_of(conn);
                let Some(chan) = self.chans.get_mut(&id) else {
                    return error(
                        ErrorCode::UnknownChannel,
                        format!("no channel named '{name}'"),
                    );
                };
                if chan.closed {
                    return error(ErrorCode::Closed, format!("channel '{name}' is closed"));
                }
                if chan.type_name.is_empty() {
                    chan.type_name = type_name;
                }
                let end = if chan.creator == me { End::A } else { End::B };
                let other = &chan.ends[end.opposite().index()];
                let peer_gone = other.ever_held && other.holders.is_empty();
                let peer_queued = peer_gone && !chan.ends[end.index()].queue.is_empty();
                let type_name = chan.type_name.clone();
                self.add_hold(conn, EndRef { chan: id, end }, 1, out);
                Reply::Found {
                    chan: id,
                    end,
                    peer_gone,
                    peer_queued,
                    type_name,
                }
            }
            Request::List => {
                let mut channels: Vec<ChannelInfo> = self
                    .names
                    .iter()
                    .map(|(name, &chan)| ChannelInfo {
                        name: name.clone(),
                        chan,
                        type_name: self
                            .chans
                            .get(&chan)
                            .map(|c| c.type_name.clone())
                            .unwrap_or_default(),
                    })
                    .collect();
                channels.sort_by(|a, b| a.name.cmp(&b.name));
                Reply::Channels { channels }
            }
            Request::Serve {
                name,
                max_in_flight,
                when_full,
            } => {
                let child = self.conns.get(&conn).and_then(|c| c.child.clone());
                self.services.serve(
                    conn,
                    child.as_deref(),
                    &name,
                    (max_in_flight, when_full),
                    Instant::now(),
                    out,
                )
            }
            Request::Unserve { name } => {
                self.services.unserve(conn, &name, Instant::now(), out);
                Reply::Done
            }
            Request::Observe { .. } | Request::Stats | Request::Monitor { .. } => error(
                ErrorCode::BadRequest,
                "observer requests are only valid on an observer's connection".into(),
            ),
            Request::SharedMemory { .. } => error(
                ErrorCode::BadRequest,
                "shared memory can only be asked for before hello".into(),
            ),
            Request::Control { action, target } => {
                let own = self.conns.get(&conn).and_then(|c| c.child.clone());
                let name = match (target, own) {
                    (Some(t), _) => t,
                    (None, Some(own)) => own,
                    (None, None) => {
                        return error(
                            ErrorCode::BadRequest,
                            "the main process must name the child".into(),
                        )
                    }
                };
                match self.children.get(&name) {
                    None => {
                        return error(
                            ErrorCode::UnknownProcess,
                            format!("no child process named '{}'", abbreviate(&name)),
                        )
                    }
                    Some(c) if c.remote => {
                        return error(
                            ErrorCode::BadRequest,
                            format!(
                                "'{}' joined from another machine: it cannot be restarted or \
                                 stopped from here",
                                abbreviate(&name)
                            ),
                        )
                    }
                    Some(_) => {}
                }
                if action == ControlAction::Restart {
                    // Restarting a child that is not running: its channels count as
                    // connected again from now on, waiting for the new process.
                    if let Some(child) = self.children.get_mut(&name) {
                        child.restart_requested = true;
                        child.gone = false;
                        if child.conn.is_none() {
                            for chan in [child.active, child.passive] {
                                let key = EndRef { chan, end: End::A };
                                if !self.holds(SUPERVISED, key) {
                                    self.add_hold(SUPERVISED, key, 1, out);
                                }
                            }
                        }
                    }
                }
                self.events.push(HubEvent::Control { action, name });
                Reply::Done
            }
        }
    }
}

mod stats;

#[cfg(test)]
mod tests;
