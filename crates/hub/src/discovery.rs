//! How the `yukicomm` command finds the running main processes of its user.
//!
//! Each hub advertises itself with a small file in a directory of its user
//! ([`dir`]): `$XDG_RUNTIME_DIR/yukicomm/` when that variable names a directory, else
//! `<temporary directory>/yukicomm-<uid>/`. The directory is made with mode `0700` and
//! is used only if it belongs to the user and is not a symbolic link. The file is named
//! `<pid>-<tag>` and holds lines `pid <pid>`, `socket <path of the hub's socket>` and
//! `program <executable's name>`; the hub removes it when it shuts down. An entry whose
//! process is gone (a main process killed with SIGKILL) is stale: [`entries`] skips it,
//! and removes it.
//!
//! ```no_run
//! for e in yukicomm_hub::discovery::entries()? {
//!     println!("{} {} {}", e.pid, e.program, e.socket.display());
//! }
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A main process's advertisement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The main process's pid.
    pub pid: u32,
    /// Its hub's socket.
    pub socket: PathBuf,
    /// Its executable's name.
    pub program: String,
    /// The advertisement file.
    pub file: PathBuf,
}

/// The directory where the main processes of this user advertise themselves (see the
/// module documentation). It may not exist.
pub fn dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute() && p.is_dir())
    {
        Some(runtime) => runtime.join("yukicomm"),
        None => {
            std::env::temp_dir().join(format!("yukicomm-{}", rustix::process::geteuid().as_raw()))
        }
    }
}

/// Checks that `dir` is a real directory of this user that only it may enter.
fn check_private(dir: &Path) -> std::io::Result<()> {
    let m = std::fs::symlink_metadata(dir)?;
    let uid = rustix::process::geteuid().as_raw();
    if !m.is_dir() || m.uid() != uid {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} is not a directory of user {uid}; not using it",
                dir.display()
            ),
        ));
    }
    if m.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Advertises a hub: writes its entry, returns the file to remove at shutdown.
pub(crate) fn advertise(socket: &Path, tag: &str) -> std::io::Result<PathBuf> {
    let dir = dir();
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    check_private(&dir)?;
    let pid = std::process::id();
    let file = dir.join(format!("{pid}-{tag}"));
    let tmp = dir.join(format!(".{pid}-{tag}.tmp"));
    let program = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    {
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "pid {pid}")?;
        writeln!(f, "socket {}", socket.display())?;
        writeln!(f, "program {program}")?;
    }
    std::fs::rename(&tmp, &file)?;
    Ok(file)
}

/// Reads one advertisement; `None` if it is not one.
fn read_entry(file: &Path) -> Option<Entry> {
    let text = std::fs::read_to_string(file).ok()?;
    let (mut pid, mut socket, mut program) = (None, None, String::new());
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("pid", v)) => pid = v.parse().ok(),
            Some(("socket", v)) => socket = Some(PathBuf::from(v)),
            Some(("program", v)) => program = v.to_string(),
            _ => {}
        }
    }
    Some(Entry {
        pid: pid?,
        socket: socket?,
        program,
        file: file.to_path_buf(),
    })
}

/// Whether a process with this pid exists (of any user).
fn alive(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    rustix::process::test_kill_process(pid) != Err(rustix::io::Errno::SRCH)
}

/// The live main processes of this user, by pid. Stale entries (process gone) are
/// removed on the way. A missing directory means none.
///
/// # Errors
///
/// When the directory exists but cannot be read, or is not this user's.
pub fn entries() -> std::io::Result<Vec<Entry>> {
    entries_in(&dir())
}

/// As [`entries`], in the directory `dir`.
///
/// # Errors
///
/// When the directory exists but cannot be read, or is not this user's.
pub fn entries_in(dir: &Path) -> std::io::Result<Vec<Entry>> {
    let list = match std::fs::read_dir(dir) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    check_private(dir)?;
    let mut found = Vec::new();
    for item in list.flatten() {
        let name = item.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let Some(entry) = read_entry(&item.path()) else {
            continue;
        };
        if alive(entry.pid) && entry.socket.exists() {
            found.push(entry);
        } else {
            let _ = std::fs::remove_file(item.path());
        }
    }
    found.sort_by(|a, b| (a.pid, &a.file).cmp(&(b.pid, &b.file)));
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_entries_are_skipped_and_removed() {
        let dir = std::env::temp_dir().join(format!("yukicomm-disc-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
        let socket = dir.join("sock");
        std::fs::write(&socket, b"").unwrap();
        let me = std::process::id();
        std::fs::write(
            dir.join(format!("{me}-aaaa")),
            format!("pid {me}\nsocket {}\nprogram t\n", socket.display()),
        )
        .unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let stale = dir.join(format!("{dead}-bbbb"));
        std::fs::write(&stale, format!("pid {dead}\nsocket {}\n", socket.display())).unwrap();
        std::fs::write(dir.join("garbage"), b"not an entry").unwrap();

        let found = entries_in(&dir).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].pid, me);
        assert_eq!(found[0].program, "t");
        assert!(!stale.exists(), "a dead process's entry is removed");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
