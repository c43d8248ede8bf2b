//! The main process's transport: direct calls into the hub, no socket.

use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt};
use yukicomm_client::transport::{
    Answer, BodyFn, CallHead, Driver, EncodeFn, OpFuture, Pump, Transport, TransportError,
};
use yukicomm_client::{LinkError, Node};
use yukicomm_hub::{ConnId, Hub};
use yukicomm_link::calls::{Calls, Slot, Waiter};
use yukicomm_wire::call::{Call, CallStatus};
use yukicomm_wire::store::{Op, OpReply};
use yukicomm_wire::{ChanId, End, EndRef, Frame, Notice, Reply, Request};

thread_local! {
    /// The size of the last body encoded on this thread, to allocate the next one once.
    static LAST_LEN: Cell<usize> = const { Cell::new(64) };
    /// The last call this thread made and the connection of the process serving it: a
    /// thread that then waits for the reply reads that connection itself.
    static LAST_CALL: Cell<Option<(u32, ConnId)>> = const { Cell::new(None) };
}

pub(crate) struct Local {
    pub(crate) hub: Arc<Hub>,
    pub(crate) max_frame: usize,
    /// The main process's calls to services awaiting replies (its registry requests and
    /// store operations are answered at once).
    calls: Calls<Answer>,
}

impl Local {
    /// Encodes a body before the hub is entered (it may run user code), refusing a
    /// frame of `head` bytes plus the body that exceeds the hub's limit.
    fn encode_body(&self, head: usize, body: BodyFn<'_>) -> Result<Bytes, TransportError> {
        let mut buf = Vec::with_capacity(LAST_LEN.with(Cell::get));
        body(&mut buf)?;
        let size = head + buf.len();
        if size > self.max_frame {
            return Err(TransportError::TooLarge {
                size,
                max: self.max_frame,
            });
        }
        Ok(Bytes::from(buf))
    }
}

impl Transport for Local {
    fn send_msg(&self, chan: ChanId, to: End, encode: EncodeFn<'_>) -> Result<(), TransportError> {
        // Encoded here, before the hub is entered: the value's `Serialize` is user code,
        // and no user code runs under a hub lock.
        let mut body = Vec::with_capacity(LAST_LEN.with(Cell::get));
        let carried = encode(&mut body)?;
        // Header (7 bytes after the kind byte) and the carried list count too.
        let size = body.len() + 8 + carried.len() * 5;
        if size > self.max_frame {
            return Err(TransportError::TooLarge {
                size,
                max: self.max_frame,
            });
        }
        LAST_LEN.with(|l| l.set(body.len().max(16)));
        // The buffer moves into `Bytes` without a copy.
        self.hub.local_send(chan, to, Bytes::from(body), carried);
        Ok(())
    }

    fn send_credit(&self, chan: ChanId, end: End, n: u32, bytes: u64) {
        self.hub.local_frames([Frame::Credit {
            chan,
            end,
            n,
            bytes,
        }]);
    }

    fn notice(&self, notice: Notice) {
        self.hub.local_frames([Frame::Notice(notice)]);
    }

    fn request(&self, request: Request, _timeout: Duration) -> Result<Reply, LinkError> {
        Ok(self.hub.local_request(request))
    }

    fn pump(
        &self,
        key: EndRef,
        ready: &dyn Fn() -> bool,
        deadline: Option<std::time::Instant>,
    ) -> Pump {
        match self.hub.pump(key, ready, deadline) {
            Some(true) => Pump::Ready,
            Some(false) => Pump::Timeout,
            None => Pump::Unavailable,
        }
    }

    fn request_async(
        &self,
        request: Request,
        _timeout: Duration,
    ) -> BoxFuture<'static, Result<Reply, LinkError>> {
        futures::future::ready(Ok(self.hub.local_request(request))).boxed()
    }

    fn store_call(&self, op: Op, _timeout: Duration) -> Result<OpReply, LinkError> {
        Ok(self.hub.store_op(op))
    }

    fn store_call_async(&self, op: Op, _timeout: Duration) -> OpFuture {
        OpFuture::ready(Ok(self.hub.store_op(op)))
    }

    fn store_send(&self, op: Op) -> Result<Option<OpReply>, LinkError> {
        Ok(Some(self.hub.store_op(op)))
    }

    fn call(
        &self,
        head: CallHead<'_>,
        body: BodyFn<'_>,
        waiter: Waiter<Answer>,
    ) -> Result<u32, TransportError> {
        // Kind byte, id, timeout, flags, and the two names with their lengths.
        let size = 1 + 4 + 4 + 1 + 2 + head.service.len() + head.method.len();
        let body = self.encode_body(size, body)?;
        let id = self.calls.next_id();
        self.calls.insert(id, waiter);
        let server = self.hub.local_call(Call {
            id,
            timeout_ms: head.timeout_ms,
            flags: head.flags,
            service: head.service.to_string(),
            method: head.method.to_string(),
            body,
        });
        LAST_CALL.with(|l| l.set(server.map(|s| (id, s))));
        Ok(id)
    }

    fn wait(
        &self,
        id: u32,
        slot: &Slot<Answer>,
        deadline: std::time::Instant,
    ) -> Result<Answer, LinkError> {
        let server = LAST_CALL
            .with(|l| l.take())
            .and_then(|(call, s)| (call == id).then_some(s));
        loop {
            if let Some(a) = slot.take() {
                return Ok(a);
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                self.calls.remove(id);
                return slot.take().ok_or(LinkError::Timeout);
            }
            // Read the server's connection on this thread while the reply is not there:
            // it then reaches this thread with no hand-off. While another thread reads
            // it, wait for the reply (and try again now and then).
            let pumped = server.is_some_and(|s| {
                self.hub
                    .pump_conn(s, &|| slot.is_ready(), Some(deadline))
                    .is_some()
            });
            if !pumped {
                std::thread::park_timeout((deadline - now).min(Duration::from_millis(5)));
            }
        }
    }

    fn cancel(&self, id: u32) {
        // Sent even if the waiter is gone (its deadline passed): the hub ignores the
        // cancellation of a call it already answered.
        self.calls.remove(id);
        self.hub.local_frames([Frame::Cancel { id }]);
    }

    fn reply(
        &self,
        id: u32,
        status: CallStatus,
        body: BodyFn<'_>,
        _more: bool,
    ) -> Result<(), TransportError> {
        let body = self.encode_body(1 + 4 + 1, body)?;
        self.hub
            .local_frames([Frame::CallReply { id, status, body }]);
        Ok(())
    }
}

/// Fails the main process's calls of tasks whose deadline passed; ends with the
/// transport.
fn call_timer(local: std::sync::Weak<Local>) {
    loop {
        let Some(l) = local.upgrade() else {
            return;
        };
        let now = std::time::Instant::now();
        let nap = l.calls.expire(now).map_or(Duration::from_millis(500), |d| {
            d.saturating_duration_since(now)
                .min(Duration::from_millis(500))
        });
        drop(l);
        std::thread::park_timeout(nap);
    }
}

/// Makes the main process's node and wires it to the hub in both directions.
pub(crate) fn local_node(hub: Arc<Hub>, runtime: tokio::runtime::Handle) -> Node {
    let driver = Driver::new(
        hub.window(),
        hub.window_bytes(),
        runtime,
        Duration::from_secs(30),
    );
    let local = Arc::new(Local {
        hub: hub.clone(),
        max_frame: hub.max_frame() as usize,
        calls: Calls::default(),
    });
    driver.set_transport(local.clone());
    let weak = Arc::downgrade(&local);
    match std::thread::Builder::new()
        .name("yukicomm-call-timer".into())
        .spawn(move || call_timer(weak))
    {
        Ok(t) => local.calls.set_timer(t.thread().clone()),
        Err(e) => tracing::error!("no thread for the deadlines of calls: {e}"),
    }
    let node = driver.node();
    hub.set_local(Arc::new(move |frames| {
        // Replies to calls go to their callers; everything else to the node.
        driver.dispatch_all(frames.filter_map(|f| match f {
            Frame::CallReply { id, status, body } => {
                let _ = local.calls.complete(id, Answer::Call(status, body));
                None
            }
            other => Some(other),
        }))
    }));
    yukicomm_client::store::set_process_node(&node);
    node
}
