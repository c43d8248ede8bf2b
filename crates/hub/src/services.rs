//! Services: which processes serve which names, the calls in progress at each server,
//! and the calls waiting for one.
//!
//! A pure state machine inside the router (frames in, frames out), like the rest of
//! routing. A call from a process gets an id of the hub's own and goes to the server of
//! its service with the fewest calls in progress below its bound; the reply comes back
//! under that id and goes to the caller under the caller's. When no server can take a
//! call, it waits in its service's queue (bounded in calls and in bytes), within its
//! deadline: for a server to be free, or for a supervised child that served the name to
//! come back after a restart. A caller that gives up sends `Cancel`, which reaches the
//! server; a server that goes fails its calls with `server_gone`; a caller that goes
//! cancels its calls.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustc_hash::FxHashMap;
use yukicomm_wire::call::{status_message, Call, CallStatus, WAIT_FOR_SERVER};
use yukicomm_wire::{abbreviate, ChannelName, ErrorCode, Frame, Reply, WhenFull};

use crate::router::{ConnId, Out};

/// Most calls that wait in one service's queue.
pub const MAX_WAITING_CALLS: usize = 65_536;
/// Most bytes of arguments that wait in one service's queue.
pub const MAX_WAITING_BYTES: usize = 64 << 20;

/// One process serving a service.
struct Server {
    conn: ConnId,
    in_flight: u32,
    max: u32,
    when_full: WhenFull,
}

#[derive(Default)]
struct Service {
    servers: Vec<Server>,
    /// Supervised children that served the name and whose process ended: calls wait
    /// for them to come back, until the supervisor gives up on them.
    expected: Vec<String>,
    /// Calls waiting for a server, oldest first (ids of [`Flight::Waiting`] calls; a
    /// call cancelled meanwhile is skipped).
    waiting: VecDeque<u32>,
    /// How many of `waiting` are not cancelled, and their bytes of arguments.
    waiting_live: usize,
    waiting_bytes: usize,
    /// Where the search for the next server starts, so that servers equally busy take
    /// calls in turn.
    turn: usize,
}

impl Service {
    fn is_unused(&self) -> bool {
        self.servers.is_empty() && self.expected.is_empty() && self.waiting.is_empty()
    }

    /// The server that takes the next call: the one with the fewest calls in progress,
    /// below its bound; among equals, the next in turn.
    fn pick(&mut self) -> Option<usize> {
        let n = self.servers.len();
        let start = self.turn % n.max(1);
        let picked = (0..n)
            .map(|k| (start + k) % n)
            .filter(|&i| self.servers[i].in_flight < self.servers[i].max)
            .min_by_key(|&i| self.servers[i].in_flight)?;
        self.turn = picked + 1;
        Some(picked)
    }
}

/// Where a call is.
enum Flight {
    Waiting {
        caller: ConnId,
        caller_id: u32,
        service: Arc<str>,
        deadline: Instant,
        call: Call,
    },
    Running {
        caller: ConnId,
        caller_id: u32,
        service: Arc<str>,
        server: ConnId,
    },
}

/// The hub's services. See the [module documentation](self).
#[derive(Default)]
pub(crate) struct Services {
    names: HashMap<Arc<str>, Service>,
    calls: FxHashMap<u32, Flight>,
    /// The hub's id of each call, by caller and the caller's id.
    by_caller: FxHashMap<(ConnId, u32), u32>,
    next_id: u32,
}

fn answer(out: &mut Vec<Out>, to: ConnId, id: u32, status: CallStatus, message: &str) {
    out.push((
        to,
        Frame::CallReply {
            id,
            status,
            body: Bytes::from(status_message(message)),
        },
    ));
}

fn millis_left(deadline: Instant, now: Instant) -> u32 {
    let left = deadline.saturating_duration_since(now).as_millis();
    u32::try_from(left).unwrap_or(u32::MAX)
}

impl Services {
    fn next_id(&mut self) -> u32 {
        loop {
            self.next_id = self.next_id.wrapping_add(1);
            if self.next_id != 0 && !self.calls.contains_key(&self.next_id) {
                return self.next_id;
            }
        }
    }

    /// `conn` (the child `child`, if it is one) serves `name` from now on.
    pub(crate) fn serve(
        &mut self,
        conn: ConnId,
        child: Option<&str>,
        name: &str,
        (max_in_flight, when_full): (u32, WhenFull),
        now: Instant,
        out: &mut Vec<Out>,
    ) -> Reply {
        if let Err(e) = ChannelName::new(name) {
            return Reply::Error {
                code: ErrorCode::InvalidName,
                message: format!("cannot serve: {e}").replace("channel name", "service name"),
            };
        }
        let key: Arc<str> = match self.names.get_key_value(name) {
            Some((k, _)) => k.clone(),
            None => name.into(),
        };
        let svc = self.names.entry(key.clone()).or_default();
        let max = max_in_flight.max(1);
        match svc.servers.iter_mut().find(|s| s.conn == conn) {
            Some(s) => {
                s.max = max;
                s.when_full = when_full;
            }
            None => svc.servers.push(Server {
                conn,
                in_flight: 0,
                max,
                when_full,
            }),
        }
        if let Some(child) = child {
            svc.expected.retain(|c| c != child);
        }
        self.run_waiting(&key, now, out);
        Reply::Done
    }

    /// `conn` stops serving `name`; its calls in progress go on.
    pub(crate) fn unserve(&mut self, conn: ConnId, name: &str, now: Instant, out: &mut Vec<Out>) {
        let Some(key) = self.names.get_key_value(name).map(|(k, _)| k.clone()) else {
            return;
        };
        if let Some(svc) = self.names.get_mut(&key) {
            svc.servers.retain(|s| s.conn != conn);
        }
        self.after_servers_left(&key, now, out);
    }

    /// A call from `conn`; returns the server it went to, if it went to one at once.
    pub(crate) fn call(
        &mut self,
        conn: ConnId,
        call: Call,
        now: Instant,
        out: &mut Vec<Out>,
    ) -> Option<ConnId> {
        let caller_id = call.id;
        if self.by_caller.contains_key(&(conn, caller_id)) {
            let msg = format!("call id {caller_id} is already in progress");
            answer(out, conn, caller_id, CallStatus::BadRequest, &msg);
            return None;
        }
        if call.timeout_ms == 0 {
            let msg = format!(
                "call {}.{}: its deadline had passed",
                abbreviate(&call.service),
                abbreviate(&call.method)
            );
            answer(out, conn, caller_id, CallStatus::Timeout, &msg);
            return None;
        }
        let wait = call.flags & WAIT_FOR_SERVER != 0;
        let key: Arc<str> = match self.names.get_key_value(call.service.as_str()) {
            Some((k, svc)) if !svc.is_unused() || wait => k.clone(),
            None if wait && ChannelName::new(&call.service).is_ok() => {
                let k: Arc<str> = call.service.as_str().into();
                self.names.insert(k.clone(), Service::default());
                k
            }
            _ => {
                let msg = format!("no process serves '{}'", abbreviate(&call.service));
                answer(out, conn, caller_id, CallStatus::NoServer, &msg);
                return None;
            }
        };
        let svc = self.names.get_mut(&key)?;
        if let Some(i) = svc.pick() {
            return self.dispatch(&key, i, conn, call, out);
        }
        let refuse =
            !svc.servers.is_empty() && svc.servers.iter().all(|s| s.when_full == WhenFull::Refuse);
        let full = svc.waiting_live >= MAX_WAITING_CALLS
            || svc.waiting_bytes + call.body.len() > MAX_WAITING_BYTES;
        if refuse || full {
            let msg = if refuse {
                format!(
                    "every server of '{}' is at its bound of calls in progress",
                    abbreviate(&call.service)
                )
            } else {
                format!(
                    "the queue of '{}' is full ({} calls waiting)",
                    abbreviate(&call.service),
                    svc.waiting_live
                )
            };
            answer(out, conn, caller_id, CallStatus::Overloaded, &msg);
            return None;
        }
        let id = self.next_id();
        let svc = self.names.get_mut(&key)?;
        svc.waiting.push_back(id);
        svc.waiting_live += 1;
        svc.waiting_bytes += call.body.len();
        self.by_caller.insert((conn, caller_id), id);
        self.calls.insert(
            id,
            Flight::Waiting {
                caller: conn,
                caller_id,
                service: key,
                deadline: now + Duration::from_millis(u64::from(call.timeout_ms)),
                call,
            },
        );
        None
    }

    /// Gives `call` to server `server` of `key`; returns that server's connection.
    fn dispatch(
        &mut self,
        key: &Arc<str>,
        server: usize,
        caller: ConnId,
        mut call: Call,
        out: &mut Vec<Out>,
    ) -> Option<ConnId> {
        let id = self.next_id();
        let s = self
            .names
            .get_mut(key)
            .and_then(|svc| svc.servers.get_mut(server))?;
        s.in_flight += 1;
        let to = s.conn;
        let caller_id = call.id;
        self.by_caller.insert((caller, caller_id), id);
        self.calls.insert(
            id,
            Flight::Running {
                caller,
                caller_id,
                service: key.clone(),
                server: to,
            },
        );
        call.id = id;
        out.push((to, Frame::Call(call)));
        Some(to)
    }

    /// Gives waiting calls of `key` to servers that can take them.
    fn run_waiting(&mut self, key: &Arc<str>, now: Instant, out: &mut Vec<Out>) {
        loop {
            let Some(svc) = self.names.get_mut(key) else {
                return;
            };
            let Some(server) = svc.pick() else {
                return;
            };
            let Some(id) = svc.waiting.pop_front() else {
                return;
            };
            let Some(Flight::Waiting {
                caller,
                caller_id,
                deadline,
                mut call,
                ..
            }) = self.calls.remove(&id)
            else {
                // Cancelled while it waited.
                continue;
            };
            svc.waiting_live -= 1;
            svc.waiting_bytes -= call.body.len();
            self.by_caller.remove(&(caller, caller_id));
            let left = millis_left(deadline, now);
            if left == 0 {
                let msg = format!(
                    "call {}.{}: no server took it before its deadline",
                    abbreviate(key),
                    abbreviate(&call.method)
                );
                answer(out, caller, caller_id, CallStatus::Timeout, &msg);
                continue;
            }
            call.timeout_ms = left;
            call.id = caller_id;
            self.dispatch(key, server, caller, call, out);
        }
    }

    /// What is left to do once servers of `key` went: waiting calls go to the servers
    /// left, or fail if nobody will serve them (those that asked to wait for a server
    /// go on waiting).
    fn after_servers_left(&mut self, key: &Arc<str>, now: Instant, out: &mut Vec<Out>) {
        let Some(svc) = self.names.get_mut(key) else {
            return;
        };
        if svc.servers.is_empty() && svc.expected.is_empty() {
            let waiting = std::mem::take(&mut svc.waiting);
            for id in waiting {
                let keep = matches!(
                    self.calls.get(&id),
                    Some(Flight::Waiting { call, .. }) if call.flags & WAIT_FOR_SERVER != 0
                );
                if keep {
                    if let Some(svc) = self.names.get_mut(key) {
                        svc.waiting.push_back(id);
                    }
                    continue;
                }
                if let Some(Flight::Waiting {
                    caller,
                    caller_id,
                    call,
                    ..
                }) = self.calls.remove(&id)
                {
                    if let Some(svc) = self.names.get_mut(key) {
                        svc.waiting_live -= 1;
                        svc.waiting_bytes -= call.body.len();
                    }
                    self.by_caller.remove(&(caller, caller_id));
                    let msg = format!("no process serves '{}' any more", abbreviate(key));
                    answer(out, caller, caller_id, CallStatus::NoServer, &msg);
                }
            }
        } else {
            self.run_waiting(key, now, out);
        }
        if self.names.get(key).is_some_and(Service::is_unused) {
            self.names.remove(key);
        }
    }

    /// A reply from `conn` to the hub's call `id`. A reply to a call that was cancelled
    /// meanwhile, or that `conn` was never given, is dropped.
    pub(crate) fn reply(
        &mut self,
        conn: ConnId,
        id: u32,
        status: CallStatus,
        body: Bytes,
        now: Instant,
        out: &mut Vec<Out>,
    ) {
        match self.calls.get(&id) {
            Some(Flight::Running { server, .. }) if *server == conn => {}
            _ => return,
        }
        let Some(Flight::Running {
            caller,
            caller_id,
            service,
            ..
        }) = self.calls.remove(&id)
        else {
            return;
        };
        self.by_caller.remove(&(caller, caller_id));
        self.finished(&service, conn);
        out.push((
            caller,
            Frame::CallReply {
                id: caller_id,
                status,
                body,
            },
        ));
        self.run_waiting(&service, now, out);
    }

    /// One call less in progress at `server`.
    fn finished(&mut self, key: &str, server: ConnId) {
        if let Some(s) = self
            .names
            .get_mut(key)
            .and_then(|svc| svc.servers.iter_mut().find(|s| s.conn == server))
        {
            s.in_flight = s.in_flight.saturating_sub(1);
        }
    }

    /// `conn` gives its call `caller_id` up.
    pub(crate) fn cancel(
        &mut self,
        conn: ConnId,
        caller_id: u32,
        now: Instant,
        out: &mut Vec<Out>,
    ) {
        let Some(id) = self.by_caller.remove(&(conn, caller_id)) else {
            return;
        };
        match self.calls.remove(&id) {
            Some(Flight::Running {
                service, server, ..
            }) => {
                self.finished(&service, server);
                out.push((server, Frame::Cancel { id }));
                self.run_waiting(&service, now, out);
            }
            Some(Flight::Waiting { service, call, .. }) => {
                if let Some(svc) = self.names.get_mut(&service) {
                    svc.waiting_live -= 1;
                    svc.waiting_bytes -= call.body.len();
                    // Its id stays in the queue, skipped when its turn comes; a queue of
                    // nothing but cancelled calls is emptied at once.
                    if svc.waiting_live == 0 {
                        svc.waiting.clear();
                    }
                }
                if self.names.get(&service).is_some_and(Service::is_unused) {
                    self.names.remove(&service);
                }
            }
            None => {}
        }
    }

    /// `conn` (the child `child`, if it is one, which `returns` after a restart unless
    /// the supervisor gives up on it) closed: its calls are cancelled at their servers,
    /// the calls it was serving fail with `server_gone`, and calls to the services it
    /// served wait for the child to come back.
    pub(crate) fn drop_conn(
        &mut self,
        conn: ConnId,
        child: Option<&str>,
        now: Instant,
        out: &mut Vec<Out>,
    ) {
        let own: Vec<u32> = self
            .by_caller
            .keys()
            .filter(|(c, _)| *c == conn)
            .map(|&(_, id)| id)
            .collect();
        for caller_id in own {
            self.cancel(conn, caller_id, now, out);
        }
        let gone: Vec<u32> = self
            .calls
            .iter()
            .filter(|(_, f)| matches!(f, Flight::Running { server, .. } if *server == conn))
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            if let Some(Flight::Running {
                caller,
                caller_id,
                service,
                ..
            }) = self.calls.remove(&id)
            {
                self.by_caller.remove(&(caller, caller_id));
                let msg = format!(
                    "the process serving '{}' ended during the call",
                    abbreviate(&service)
                );
                answer(out, caller, caller_id, CallStatus::ServerGone, &msg);
            }
        }
        let served: Vec<Arc<str>> = self
            .names
            .iter()
            .filter(|(_, svc)| svc.servers.iter().any(|s| s.conn == conn))
            .map(|(k, _)| k.clone())
            .collect();
        for key in served {
            if let Some(svc) = self.names.get_mut(&key) {
                svc.servers.retain(|s| s.conn != conn);
                if let Some(child) = child {
                    if !svc.expected.iter().any(|c| c == child) {
                        svc.expected.push(child.to_string());
                    }
                }
            }
            self.after_servers_left(&key, now, out);
        }
    }

    /// The supervisor gave up on child `name`: calls no longer wait for it.
    pub(crate) fn child_gone(&mut self, name: &str, now: Instant, out: &mut Vec<Out>) {
        let keys: Vec<Arc<str>> = self
            .names
            .iter()
            .filter(|(_, svc)| svc.expected.iter().any(|c| c == name))
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            if let Some(svc) = self.names.get_mut(&key) {
                svc.expected.retain(|c| c != name);
            }
            self.after_servers_left(&key, now, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALLER: ConnId = ConnId(1);
    const S1: ConnId = ConnId(2);
    const S2: ConnId = ConnId(3);

    fn call(id: u32, flags: u8) -> Call {
        Call {
            id,
            timeout_ms: 1000,
            flags,
            service: "svc".into(),
            method: "m".into(),
            body: Bytes::from_static(b"\x90"),
        }
    }

    /// The frames in `out` for `to`, taken out.
    fn take(out: &mut Vec<Out>, to: ConnId) -> Vec<Frame> {
        let (mine, rest): (Vec<Out>, Vec<Out>) = out.drain(..).partition(|(c, _)| *c == to);
        *out = rest;
        mine.into_iter().map(|(_, f)| f).collect()
    }

    fn status_of(frames: &[Frame]) -> Vec<(u32, CallStatus)> {
        frames
            .iter()
            .filter_map(|f| match f {
                Frame::CallReply { id, status, .. } => Some((*id, *status)),
                _ => None,
            })
            .collect()
    }

    fn served_ids(frames: &[Frame]) -> Vec<u32> {
        frames
            .iter()
            .filter_map(|f| match f {
                Frame::Call(c) => Some(c.id),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_call_goes_to_the_server_and_its_reply_to_the_caller_under_its_own_id() {
        let (mut s, mut out, now) = (Services::default(), Vec::new(), Instant::now());
        s.serve(S1, None, "svc", (8, WhenFull::Wait), now, &mut out);
        s.call(CALLER, call(77, 0), now, &mut out);
        let at_server = take(&mut out, S1);
        let hub_id = served_ids(&at_server)[0];
        s.reply(S1, hub_id, CallStatus::Ok, Bytes::new(), now, &mut out);
        assert_eq!(status_of(&take(&mut out, CALLER)), [(77, CallStatus::Ok)]);
        // A second reply to the same call, or one from another process, is dropped.
        s.reply(S1, hub_id, CallStatus::Ok, Bytes::new(), now, &mut out);
        s.reply(S2, hub_id, CallStatus::Ok, Bytes::new(), now, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn no_server_fails_at_once_unless_the_caller_waits_for_one() {
        let (mut s, mut out, now) = (Services::default(), Vec::new(), Instant::now());
        s.call(CALLER, call(1, 0), now, &mut out);
        assert_eq!(
            status_of(&take(&mut out, CALLER)),
            [(1, CallStatus::NoServer)]
        );
        s.call(CALLER, call(2, WAIT_FOR_SERVER), now, &mut out);
        assert!(out.is_empty());
        s.serve(S1, None, "svc", (8, WhenFull::Wait), now, &mut out);
        assert_eq!(served_ids(&take(&mut out, S1)).len(), 1);
    }

    #[test]
    fn calls_go_to_the_least_busy_server_and_wait_or_are_refused_at_the_bound() {
        let (mut s, mut out, now) = (Services::default(), Vec::new(), Instant::now());
        s.serve(S1, None, "svc", (2, WhenFull::Wait), now, &mut out);
        s.serve(S2, None, "svc", (2, WhenFull::Wait), now, &mut out);
        for id in 0..4 {
            s.call(CALLER, call(id, 0), now, &mut out);
        }
        let (a, b) = (take(&mut out, S1), take(&mut out, S2));
        assert_eq!((a.len(), b.len()), (2, 2), "two each");
        s.call(CALLER, call(9, 0), now, &mut out);
        assert!(out.is_empty(), "both at their bound: it waits");
        s.reply(
            S2,
            served_ids(&b)[0],
            CallStatus::Ok,
            Bytes::new(),
            now,
            &mut out,
        );
        assert_eq!(status_of(&take(&mut out, CALLER)).len(), 1);
        assert_eq!(
            served_ids(&take(&mut out, S2)).len(),
            1,
            "the waiting call ran"
        );

        let (mut s, mut out) = (Services::default(), Vec::new());
        s.serve(S1, None, "svc", (1, WhenFull::Refuse), now, &mut out);
        s.call(CALLER, call(1, 0), now, &mut out);
        s.call(CALLER, call(2, 0), now, &mut out);
        assert_eq!(
            status_of(&take(&mut out, CALLER)),
            [(2, CallStatus::Overloaded)]
        );
    }

    #[test]
    fn a_cancelled_call_reaches_its_server_and_frees_its_place() {
        let (mut s, mut out, now) = (Services::default(), Vec::new(), Instant::now());
        s.serve(S1, None, "svc", (1, WhenFull::Wait), now, &mut out);
        s.call(CALLER, call(1, 0), now, &mut out);
        s.call(CALLER, call(2, 0), now, &mut out);
        s.call(CALLER, call(3, 0), now, &mut out);
        let first = served_ids(&take(&mut out, S1))[0];
        // Cancel the waiting call 2, then the running call 1: call 3 runs next.
        s.cancel(CALLER, 2, now, &mut out);
        assert!(out.is_empty());
        s.cancel(CALLER, 1, now, &mut out);
        let at_server = take(&mut out, S1);
        assert!(matches!(at_server[0], Frame::Cancel { id } if id == first));
        assert_eq!(served_ids(&at_server).len(), 1);
        // The late reply to the cancelled call is dropped.
        s.reply(S1, first, CallStatus::Ok, Bytes::new(), now, &mut out);
        assert!(take(&mut out, CALLER).is_empty());
    }

    #[test]
    fn a_server_that_goes_fails_its_calls_and_a_child_is_waited_for() {
        let (mut s, mut out, now) = (Services::default(), Vec::new(), Instant::now());
        s.serve(
            S1,
            Some("worker"),
            "svc",
            (8, WhenFull::Wait),
            now,
            &mut out,
        );
        s.call(CALLER, call(1, 0), now, &mut out);
        take(&mut out, S1);
        s.drop_conn(S1, Some("worker"), now, &mut out);
        assert_eq!(
            status_of(&take(&mut out, CALLER)),
            [(1, CallStatus::ServerGone)]
        );
        // The child will be back: a new call waits for it.
        s.call(CALLER, call(2, 0), now, &mut out);
        assert!(out.is_empty());
        s.serve(
            S2,
            Some("worker"),
            "svc",
            (8, WhenFull::Wait),
            now,
            &mut out,
        );
        assert_eq!(served_ids(&take(&mut out, S2)).len(), 1);
        // Given up on: waiting calls fail with no server.
        s.drop_conn(S2, Some("worker"), now, &mut out);
        take(&mut out, CALLER);
        s.call(CALLER, call(3, 0), now, &mut out);
        s.child_gone("worker", now, &mut out);
        assert_eq!(
            status_of(&take(&mut out, CALLER)),
            [(3, CallStatus::NoServer)]
        );
        assert!(s.names.is_empty() && s.calls.is_empty() && s.by_caller.is_empty());
    }

    #[test]
    fn a_caller_that_goes_cancels_its_calls() {
        let (mut s, mut out, now) = (Services::default(), Vec::new(), Instant::now());
        s.serve(S1, None, "svc", (8, WhenFull::Wait), now, &mut out);
        s.call(CALLER, call(1, 0), now, &mut out);
        let id = served_ids(&take(&mut out, S1))[0];
        s.drop_conn(CALLER, None, now, &mut out);
        assert!(matches!(take(&mut out, S1)[..], [Frame::Cancel { id: c }] if c == id));
        assert!(s.calls.is_empty() && s.by_caller.is_empty());
    }

    #[test]
    fn a_waiting_call_past_its_deadline_times_out_instead_of_running() {
        let (mut s, mut out, now) = (Services::default(), Vec::new(), Instant::now());
        s.serve(S1, None, "svc", (1, WhenFull::Wait), now, &mut out);
        s.call(CALLER, call(1, 0), now, &mut out);
        s.call(CALLER, call(2, 0), now, &mut out);
        let id = served_ids(&take(&mut out, S1))[0];
        let later = now + Duration::from_secs(2);
        s.reply(S1, id, CallStatus::Ok, Bytes::new(), later, &mut out);
        assert_eq!(
            status_of(&take(&mut out, CALLER)),
            [(1, CallStatus::Ok), (2, CallStatus::Timeout)]
        );
        assert!(take(&mut out, S1).is_empty());
    }
}
