//! The main process's transport: direct calls into the hub, no socket.

use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt};
use yukicomm_client::transport::{Driver, EncodeFn, OpFuture, Pump, Transport, TransportError};
use yukicomm_client::{LinkError, Node};
use yukicomm_hub::Hub;
use yukicomm_wire::store::{Op, OpReply};
use yukicomm_wire::{ChanId, End, EndRef, Frame, Notice, Reply, Request};

thread_local! {
    /// The size of the last body encoded on this thread, to allocate the next one once.
    static LAST_LEN: Cell<usize> = const { Cell::new(64) };
}

pub(crate) struct Local {
    pub(crate) hub: Arc<Hub>,
    pub(crate) max_frame: usize,
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
}

/// Makes the main process's node and wires it to the hub in both directions.
pub(crate) fn local_node(hub: Arc<Hub>, runtime: tokio::runtime::Handle) -> Node {
    let driver = Driver::new(
        hub.window(),
        hub.window_bytes(),
        runtime,
        Duration::from_secs(30),
    );
    driver.set_transport(Arc::new(Local {
        hub: hub.clone(),
        max_frame: hub.max_frame() as usize,
    }));
    let node = driver.node();
    hub.set_local(Arc::new(move |frames| driver.dispatch_all(frames)));
    yukicomm_client::store::set_process_node(&node);
    node
}
