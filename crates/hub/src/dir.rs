//! The hub's private socket directory: making it, and removing those that main processes
//! killed before they could clean up left behind.

use std::path::PathBuf;

use rand::Rng;

/// Makes a fresh directory only this user may enter (mode `0700`) for the hub's socket,
/// in `parent` or the default place, after removing stale ones there.
pub(crate) fn private_dir(parent: Option<PathBuf>) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let parent = parent
        .or_else(|| {
            std::env::var_os("XDG_RUNTIME_DIR")
                .map(PathBuf::from)
                .filter(|p| p.is_dir())
        })
        .unwrap_or_else(std::env::temp_dir);
    remove_stale_dirs(&parent);
    let mut rng = rand::thread_rng();
    for _ in 0..16 {
        let dir = parent.join(format!(
            "yukicomm-{}-{:08x}",
            std::process::id(),
            rng.gen::<u32>()
        ));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AlreadyExists,
        "no free socket directory name",
    ))
}

/// Removes the socket directories that main processes killed before they could clean up
/// left in `parent`: a directory `yukicomm-<pid>-<8 hex digits>` of this user whose
/// process is gone and whose socket refuses connections. Anything else is left alone,
/// and failures are ignored: this is tidying, not a condition for starting.
fn remove_stale_dirs(parent: &std::path::Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    let uid = rustix::process::geteuid().as_raw();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("yukicomm-"))
            .and_then(|n| n.split_once('-'))
            .filter(|(_, tag)| tag.len() == 8 && tag.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|(pid, _)| pid.parse::<i32>().ok())
            .and_then(rustix::process::Pid::from_raw)
        else {
            continue;
        };
        let gone = rustix::process::test_kill_process(pid) == Err(rustix::io::Errno::SRCH);
        let dir = entry.path();
        let mine = std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir() && m.uid() == uid);
        if !gone || !mine {
            continue;
        }
        let socket = dir.join("hub.sock");
        match std::os::unix::net::UnixStream::connect(&socket) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                let _ = std::fs::remove_file(&socket);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            _ => continue,
        }
        if std::fs::remove_dir(&dir).is_ok() {
            tracing::debug!(dir = %dir.display(), "removed a stale socket directory");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A pid that no process has: a child's, after it has been reaped.
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("run true");
        let pid = child.id();
        child.wait().expect("reap true");
        pid
    }

    #[test]
    fn only_dead_hubs_directories_are_removed() {
        let parent = std::env::temp_dir().join(format!("yukicomm-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&parent);
        std::fs::create_dir(&parent).expect("make the parent");
        // A socket directory; its listener, while kept, accepts connections, and once
        // dropped leaves the socket file behind, refusing them.
        let make = |name: String| {
            let dir = parent.join(name);
            std::fs::create_dir(&dir).expect("make a socket directory");
            let listener = UnixListener::bind(dir.join("hub.sock")).expect("bind");
            (dir, listener)
        };
        let dead = dead_pid();
        let (stale, _) = make(format!("yukicomm-{dead}-0000abcd"));
        let empty = parent.join(format!("yukicomm-{dead}-0000abce"));
        std::fs::create_dir(&empty).expect("make an empty directory");
        let (listening, _listener) = make(format!("yukicomm-{dead}-0000abcf"));
        let (alive, _) = make(format!("yukicomm-{}-0000abd0", std::process::id()));
        let (other, _) = make(format!("yukicomm-{dead}-not-ours"));

        remove_stale_dirs(&parent);

        assert!(!stale.exists(), "a dead hub's directory is removed");
        assert!(
            !empty.exists(),
            "an empty directory of a dead hub is removed"
        );
        assert!(listening.exists(), "a socket that accepts is in use");
        assert!(alive.exists(), "a live process's directory is kept");
        assert!(other.exists(), "a name the hub does not make is left alone");
        std::fs::remove_dir_all(&parent).expect("clean up");
    }
}
