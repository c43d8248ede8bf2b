//! What the router reports about itself for a statistics request: a copy of the
//! figures, taken in one short section under the router's lock (no allocation per
//! message, one pass over the channels and connections).

use rustc_hash::FxHashMap;
use yukicomm_wire::stats::{ChannelStats, EndStats, MAX_CHANNELS};
use yukicomm_wire::End;

use super::{ConnId, Router, LOCAL, SUPERVISED, TRANSIT};

/// The router's part of a report.
pub(crate) struct RouterSnapshot {
    /// The credit window, in messages.
    pub(crate) window: u32,
    /// The name of each connection that belongs to a child.
    pub(crate) names: FxHashMap<ConnId, String>,
    /// Each announced child and its connection, if it has one.
    pub(crate) children: Vec<(String, Option<ConnId>)>,
    /// Per connection: the most messages sent from one end and not yet delivered.
    pub(crate) in_flight: FxHashMap<ConnId, u64>,
    /// Named channels, then unnamed ones with a backlog.
    pub(crate) channels: Vec<ChannelStats>,
    /// Channels left out for the limit.
    pub(crate) omitted: u64,
}

impl Router {
    /// A channel's registered name.
    pub(crate) fn channel_name(&self, chan: yukicomm_wire::ChanId) -> Option<String> {
        self.chans.get(&chan).and_then(|c| c.name.clone())
    }

    /// The name a report gives a process (a holder, a receiver, a sender).
    pub(crate) fn process_name(&self, conn: ConnId) -> String {
        match conn {
            LOCAL => "main".into(),
            TRANSIT => "(in a message)".into(),
            SUPERVISED => "(kept for its restart)".into(),
            c => match self.conns.get(&c).and_then(|s| s.child.clone()) {
                Some(name) => name,
                None => format!("connection {}", c.0),
            },
        }
    }

    /// A copy of what a statistics request reports about channels and processes.
    pub(crate) fn snapshot(&self) -> RouterSnapshot {
        let names = self
            .conns
            .iter()
            .filter_map(|(&c, s)| Some((c, s.child.clone()?)))
            .collect();
        let mut children: Vec<(String, Option<ConnId>)> = self
            .children
            .iter()
            .map(|(n, c)| (n.clone(), c.conn))
            .collect();
        children.sort();
        let in_flight = self
            .conns
            .iter()
            .map(|(&c, s)| {
                let most = s
                    .sending
                    .values()
                    .map(|e| e.outstanding.saturating_sub(e.owed) as u64)
                    .max()
                    .unwrap_or(0);
                (c, most)
            })
            .collect();
        let mut ids: Vec<_> = self
            .chans
            .iter()
            .filter(|(_, c)| c.name.is_some() || c.ends.iter().any(|e| !e.queue.is_empty()))
            .map(|(&id, c)| (c.name.is_none(), id))
            .collect();
        ids.sort_unstable();
        let omitted = ids.len().saturating_sub(MAX_CHANNELS) as u64;
        let channels = ids
            .into_iter()
            .take(MAX_CHANNELS)
            .filter_map(|(_, id)| {
                let c = self.chans.get(&id)?;
                let ends = [End::A, End::B]
                    .into_iter()
                    .map(|end| {
                        let e = &c.ends[end.index()];
                        let mut holders: Vec<String> =
                            e.holders.keys().map(|&h| self.process_name(h)).collect();
                        holders.sort();
                        let receivers = e
                            .receivers
                            .iter()
                            .map(|r| self.process_name(r.conn))
                            .collect();
                        EndStats {
                            end,
                            holders,
                            receivers,
                            backlog: e.queue.len() as u64,
                            backlog_bytes: e.queue.iter().map(|q| q.body.len() as u64).sum(),
                        }
                    })
                    .collect();
                Some(ChannelStats {
                    chan: id,
                    name: c.name.clone(),
                    type_name: c.type_name.clone(),
                    closed: c.closed,
                    ends,
                })
            })
            .collect();
        RouterSnapshot {
            window: self.window,
            names,
            children,
            in_flight,
            channels,
            omitted,
        }
    }
}
