//! Waiting on several channels at once.
//!
//! Among arms that are ready together, the one handled is chosen at random, as in Go's
//! `select`, so an arm that is always ready (a disconnected channel) cannot starve the
//! others.

use std::cell::Cell;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::channel::Channel;
use crate::error::RecvError;

use crate::end::Item;

/// An arm of a selector. `Send`, so that a selector, and the future of
/// [`Selector::wait_async`], can move between threads.
trait Arm<'a, R>: Send {
    /// The arm's output if its channel is ready now (a message, or finished).
    fn poll_now(&mut self) -> Option<R>;
    /// Handles an item taken while waiting; `None` for a wake marker.
    fn handle(&mut self, item: Item) -> Option<R>;
    fn register<'s>(
        &'s self,
        sel: flume::Selector<'s, (usize, Option<Item>)>,
        index: usize,
    ) -> flume::Selector<'s, (usize, Option<Item>)>;
    fn wait_item(&self) -> Pin<Box<dyn Future<Output = Option<Item>> + Send + '_>>;
}

struct ChanArm<'a, T, F> {
    channel: &'a Channel<T>,
    map: Option<F>,
}

impl<'a, T, F, R> Arm<'a, R> for ChanArm<'a, T, F>
where
    T: Serialize + DeserializeOwned + 'a,
    F: FnOnce(Result<T, RecvError>) -> R + Send + 'a,
    R: 'a,
{
    fn poll_now(&mut self) -> Option<R> {
        if let Err(e) = self.channel.ensure_active() {
            return self.map.take().map(|f| f(Err(e)));
        }
        while let Ok(item) = self.channel.state().rx.try_recv() {
            if let Some(r) = self.handle(item) {
                return Some(r);
            }
        }
        let e = self.channel.finished()?;
        self.map.take().map(|f| f(Err(e)))
    }

    fn handle(&mut self, item: Item) -> Option<R> {
        let result = self.channel.take(item)?;
        self.map.take().map(|f| f(result))
    }

    fn register<'s>(
        &'s self,
        sel: flume::Selector<'s, (usize, Option<Item>)>,
        index: usize,
    ) -> flume::Selector<'s, (usize, Option<Item>)> {
        sel.recv(&self.channel.state().rx, move |item| (index, item.ok()))
    }

    fn wait_item(&self) -> Pin<Box<dyn Future<Output = Option<Item>> + Send + '_>> {
        let st = self.channel.state();
        Box::pin(async move { st.rx.recv_async().await.ok() })
    }
}

/// Waits on several channels and handles whichever has a message first.
///
/// Every channel in a selector receives actively. An arm whose channel is closed or
/// disconnected is ready with that error, as in Go's `select`: it stays ready for good,
/// so a loop should drop such a channel from its selector. When several arms are ready
/// at once, one of them is chosen at random, so an always-ready arm does not starve the
/// others.
///
/// A selector and the future of [`wait_async`](Selector::wait_async) are `Send`: the
/// future can be spawned on a multi-threaded runtime.
///
/// # Examples
///
/// ```no_run
/// # fn demo(a: yukicomm_client::Channel<u32>, b: yukicomm_client::Channel<String>) {
/// use yukicomm_client::Selector;
/// let text = Selector::new()
///     .recv(&a, |n| format!("number {n:?}"))
///     .recv(&b, |s| format!("text {s:?}"))
///     .wait();
/// # }
/// ```
pub struct Selector<'a, R> {
    arms: Vec<Box<dyn Arm<'a, R> + 'a>>,
}

thread_local! {
    /// State of this thread's generator for the starting arm (xorshift64*), seeded from
    /// the standard library's per-process random hash keys.
    static RNG: Cell<u64> = Cell::new({
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(&h as *const _ as usize);
        h.finish() | 1
    });
}

/// A number in `0..n` (`n > 0`), cheap and good enough to pick a starting arm.
fn random_below(n: usize) -> usize {
    RNG.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as usize % n
    })
}

impl<R> std::fmt::Debug for Selector<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Selector")
            .field("arms", &self.arms.len())
            .finish()
    }
}

impl<R> Default for Selector<'_, R> {
    fn default() -> Self {
        Selector { arms: Vec::new() }
    }
}

impl<'a, R: 'a> Selector<'a, R> {
    /// An empty selector.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a channel; `map` turns its result into the selector's output.
    pub fn recv<T, F>(mut self, channel: &'a Channel<T>, map: F) -> Self
    where
        T: Serialize + DeserializeOwned + 'a,
        F: FnOnce(Result<T, RecvError>) -> R + Send + 'a,
    {
        self.arms.push(Box::new(ChanArm {
            channel,
            map: Some(map),
        }));
        self
    }

    /// The output of the first ready arm, starting at a random arm.
    fn poll_all(&mut self) -> Option<R> {
        let n = self.arms.len();
        let start = random_below(n);
        for k in 0..n {
            if let Some(r) = self.arms[(start + k) % n].poll_now() {
                return Some(r);
            }
        }
        None
    }

    /// Waits until a channel is ready and returns its arm's output.
    ///
    /// # Panics
    ///
    /// If the selector has no arms (it would wait forever).
    pub fn wait(self) -> R {
        match self.wait_until(None) {
            Some(r) => r,
            None => unreachable!("a wait without deadline only returns when ready"),
        }
    }

    /// Waits at most `timeout`; `None` if nothing was ready in time.
    pub fn wait_timeout(self, timeout: Duration) -> Option<R> {
        self.wait_until(Some(Instant::now() + timeout))
    }

    fn wait_until(mut self, deadline: Option<Instant>) -> Option<R> {
        assert!(
            !self.arms.is_empty(),
            "a Selector needs at least one channel"
        );
        loop {
            if let Some(r) = self.poll_all() {
                return Some(r);
            }
            let mut sel = flume::Selector::new();
            let n = self.arms.len();
            let start = random_below(n);
            for k in 0..n {
                let i = (start + k) % n;
                sel = self.arms[i].register(sel, i);
            }
            let woke = match deadline {
                Some(d) => sel.wait_deadline(d).ok(),
                None => Some(sel.wait()),
            };
            match woke {
                None => return self.poll_all(),
                Some((i, Some(item))) => {
                    if let Some(r) = self.arms[i].handle(item) {
                        return Some(r);
                    }
                }
                Some((_, None)) => {}
            }
        }
    }

    /// Awaits until a channel is ready and returns its arm's output.
    ///
    /// # Panics
    ///
    /// If the selector has no arms.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: no message is lost if the future is dropped.
    pub async fn wait_async(mut self) -> R {
        assert!(
            !self.arms.is_empty(),
            "a Selector needs at least one channel"
        );
        loop {
            if let Some(r) = self.poll_all() {
                return r;
            }
            let n = self.arms.len();
            let start = random_below(n);
            let waits: Vec<_> = (0..n)
                .map(|k| self.arms[(start + k) % n].wait_item())
                .collect();
            let (item, k, _) = futures::future::select_all(waits).await;
            let i = (start + k) % n;
            if let Some(item) = item {
                if let Some(r) = self.arms[i].handle(item) {
                    return r;
                }
            }
        }
    }
}
