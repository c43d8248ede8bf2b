//! The shared store and publish/subscribe between real processes.

mod support;

use std::time::Duration;

use support::{app, child, run_main, watchdog};
use yukicomm::{shared_memory, Context};

const T: Duration = Duration::from_secs(20);

async fn snippet_child(ctx: Context) -> yukicomm::Result<()> {
    child(async move {
        let store = shared_memory();
        store.set("from-child", &"value from the child")?;
        let seen: Option<String> = store.get("from-main")?;
        ctx.passive_channel::<Option<String>>().send(seen)?;
        let _ = ctx.active_channel::<()>().recv_async().await;
        Ok(())
    })
    .await
}

#[test]
fn upstream_snippet_from_main_and_child() {
    let _w = watchdog(
        "upstream_snippet_from_main_and_child",
        Duration::from_secs(60),
    );
    let mut app = app("upstream_snippet_from_main_and_child");
    app.on_before_start(|ctx| async move {
        ctx.store().set("from-main", &"value from main")?;
        Ok(())
    });
    app.add_target("snippet", snippet_child);
    run_main(app, |ctx| {
        let store = shared_memory();
        let back = ctx
            .get_channel::<Option<String>>("snippet-passive")
            .unwrap();
        assert_eq!(
            back.recv_timeout(T).unwrap().as_deref(),
            Some("value from main")
        );
        let v: Option<String> = store.get("from-child").unwrap();
        assert_eq!(v.as_deref(), Some("value from the child"));
        assert!(store.delete("from-child").unwrap());
        assert_eq!(store.get::<String>("from-child").unwrap(), None);
        let all = store.get_all().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(
            all["from-main"].decode::<String>().unwrap(),
            "value from main"
        );
    });
}
