//! Lifecycle hooks.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::future::{BoxFuture, FutureExt};

use crate::MainContext;

pub(crate) type Hook = Arc<dyn Fn(MainContext) -> BoxFuture<'static, Option<String>> + Send + Sync>;
pub(crate) type NamedHook =
    Arc<dyn Fn(MainContext, String) -> BoxFuture<'static, Option<String>> + Send + Sync>;

/// Every registered hook. A hook that fails or panics is logged; the others still run.
#[derive(Default, Clone)]
pub(crate) struct Hooks {
    pub(crate) before_start: Vec<Hook>,
    pub(crate) after_start: Vec<Hook>,
    pub(crate) before_process_shutdown: Vec<NamedHook>,
    pub(crate) before_process_restart: Vec<NamedHook>,
    pub(crate) after_shutdown: Vec<Hook>,
    pub(crate) after_restart: Vec<NamedHook>,
}

pub(crate) fn hook<F, Fut>(f: F) -> Hook
where
    F: Fn(MainContext) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = yukicomm_client::Result<()>> + Send + 'static,
{
    Arc::new(move |ctx| f(ctx).map(|r| r.err().map(|e| e.to_string())).boxed())
}

pub(crate) fn named_hook<F, Fut>(f: F) -> NamedHook
where
    F: Fn(MainContext, String) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = yukicomm_client::Result<()>> + Send + 'static,
{
    Arc::new(move |ctx, name| f(ctx, name).map(|r| r.err().map(|e| e.to_string())).boxed())
}

pub(crate) async fn run_one(which: &str, fut: BoxFuture<'static, Option<String>>) {
    match AssertUnwindSafe(fut).catch_unwind().await {
        Ok(None) => {}
        Ok(Some(e)) => tracing::error!(hook = which, "hook failed: {e}"),
        Err(_) => tracing::error!(hook = which, "hook panicked"),
    }
}

impl Hooks {
    pub(crate) async fn run(list: &[Hook], which: &str, ctx: &MainContext) {
        for h in list {
            run_one(which, h(ctx.clone())).await;
        }
    }

    async fn run_named(list: &[NamedHook], which: &str, ctx: &MainContext, name: &str) {
        for h in list {
            run_one(which, h(ctx.clone(), name.to_string())).await;
        }
    }

    pub(crate) async fn before_process_shutdown(&self, ctx: &MainContext, name: &str) {
        Self::run_named(
            &self.before_process_shutdown,
            "on_before_process_shutdown",
            ctx,
            name,
        )
        .await;
    }

    pub(crate) async fn before_process_restart(&self, ctx: &MainContext, name: &str) {
        Self::run_named(
            &self.before_process_restart,
            "on_before_process_restart",
            ctx,
            name,
        )
        .await;
    }

    pub(crate) async fn after_restart(&self, ctx: &MainContext, name: &str) {
        Self::run_named(&self.after_restart, "on_after_restart", ctx, name).await;
    }
}
