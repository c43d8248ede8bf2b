//! Small operating-system helpers shared by both sides of a connection.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Instant;

/// A `pollfd` asking for readability.
pub fn pollfd(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// Waits until one of `fds` is readable (or hung up), or `deadline` passes: `Ok(false)`
/// on timeout. Check each entry's `revents` afterwards.
///
/// # Errors
///
/// The error of `poll`, other than an interruption.
pub fn wait_readable(fds: &mut [libc::pollfd], deadline: Option<Instant>) -> std::io::Result<bool> {
    loop {
        let timeout = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                // Round up so that we never wake just before the deadline.
                left.as_millis().min(i32::MAX as u128) as i32
                    + i32::from(left.subsec_nanos() % 1_000_000 != 0)
            }
        };
        for fd in fds.iter_mut() {
            fd.revents = 0;
        }
        // SAFETY: `fds` is a valid, exclusively borrowed array of pollfd.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n > 0 {
            return Ok(true);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(false);
        }
    }
}

/// One `read` into the spare capacity of `buf`: `Ok(0)` at end of stream, and
/// `WouldBlock` when a non-blocking descriptor has nothing.
///
/// # Errors
///
/// The error of `read`.
pub fn read_into(fd: RawFd, buf: &mut bytes::BytesMut, at_least: usize) -> std::io::Result<usize> {
    recv_into(fd, buf, at_least, 0)
}

/// As [`read_into`], for a socket, never blocking: `WouldBlock` when it has nothing.
///
/// # Errors
///
/// The error of `recv`.
pub fn read_into_nowait(
    fd: RawFd,
    buf: &mut bytes::BytesMut,
    at_least: usize,
) -> std::io::Result<usize> {
    recv_into(fd, buf, at_least, libc::MSG_DONTWAIT)
}

fn recv_into(
    fd: RawFd,
    buf: &mut bytes::BytesMut,
    at_least: usize,
    flags: libc::c_int,
) -> std::io::Result<usize> {
    buf.reserve(at_least);
    let spare = buf.spare_capacity_mut();
    // SAFETY: `read`/`recv` write at most `spare.len()` bytes into the uninitialised
    // spare capacity of `buf`, and only the `n` bytes they report are marked initialised.
    let n = unsafe {
        if flags == 0 {
            libc::read(fd, spare.as_mut_ptr().cast(), spare.len())
        } else {
            libc::recv(fd, spare.as_mut_ptr().cast(), spare.len(), flags)
        }
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel initialised `n` bytes of the spare capacity.
    unsafe { buf.set_len(buf.len() + n as usize) };
    Ok(n as usize)
}

/// A non-blocking, close-on-exec pipe for waking a thread out of `poll`: `(read, write)`.
///
/// # Errors
///
/// The error of `pipe`.
pub fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe writes.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    for fd in fds {
        // SAFETY: plain fcntl calls on descriptors we own.
        unsafe {
            libc::fcntl(
                fd,
                libc::F_SETFL,
                libc::fcntl(fd, libc::F_GETFL) | libc::O_NONBLOCK,
            );
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
    // SAFETY: pipe returned two fresh descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Writes one byte to a wake-up pipe. A full pipe already holds a wake-up, so a failed
/// write loses nothing.
pub fn poke(tx: &OwnedFd) {
    // SAFETY: writes one byte from a local buffer to a descriptor we own.
    unsafe { libc::write(tx.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
}

/// Empties a wake-up pipe.
pub fn drain(rx: &OwnedFd) {
    let mut sink = [0u8; 64];
    // SAFETY: reads into a local buffer from a non-blocking descriptor we own.
    while unsafe { libc::read(rx.as_raw_fd(), sink.as_mut_ptr().cast(), sink.len()) } > 0 {}
}

/// Asks for a send buffer of `bytes` on a socket (the system may cap it). A larger buffer
/// lets a sender queue more before it must wait for the reader, so large messages and
/// bursts take fewer system calls and wake-ups.
pub fn set_send_buffer(fd: RawFd, bytes: usize) {
    let size = bytes.min(i32::MAX as usize) as libc::c_int;
    // SAFETY: passes a pointer to a local int of the size given, as setsockopt expects.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}
