//! The system calls under a connection, through `rustix`: waiting for readability,
//! reading into a buffer's spare room, wake-up pipes, the socket's send buffer.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;

/// A poll entry asking for readability of `fd`.
pub fn pollfd(fd: BorrowedFd<'_>) -> PollFd<'_> {
    PollFd::from_borrowed_fd(fd, PollFlags::IN)
}

/// Whether `poll` reported `fd` readable, hung up or failed.
pub fn fired(fd: &PollFd<'_>) -> bool {
    !fd.revents().is_empty()
}

/// Waits until one of `fds` is readable (or hung up), or `deadline` passes: `Ok(false)`
/// on timeout. Check each entry with [`fired`] afterwards.
///
/// # Errors
///
/// The error of `poll`, other than an interruption.
pub fn wait_readable(fds: &mut [PollFd<'_>], deadline: Option<Instant>) -> std::io::Result<bool> {
    loop {
        let timeout = deadline.map(|d| {
            let left = d.saturating_duration_since(Instant::now());
            Timespec {
                tv_sec: left.as_secs().min(i64::MAX as u64) as i64,
                tv_nsec: left.subsec_nanos().into(),
            }
        });
        for fd in fds.iter_mut() {
            fd.clear_revents();
        }
        match rustix::event::poll(fds, timeout.as_ref()) {
            Ok(0) => {}
            Ok(_) => return Ok(true),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(false);
        }
    }
}

/// One `read` into the spare capacity of `buf` (at least `at_least` bytes of it):
/// `Ok(0)` at end of stream, and `WouldBlock` when a non-blocking descriptor has nothing.
///
/// # Errors
///
/// The error of `read`.
pub fn read_into(
    fd: impl AsFd,
    buf: &mut bytes::BytesMut,
    at_least: usize,
) -> std::io::Result<usize> {
    buf.reserve(at_least);
    let (filled, _) = rustix::io::read(fd, buf.spare_capacity_mut())?;
    let n = filled.len();
    // SAFETY: `read` initialised the first `n` bytes of the spare capacity.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// As [`read_into`], for a socket, never blocking: `WouldBlock` when it has nothing.
///
/// # Errors
///
/// The error of `recv`.
pub fn read_into_nowait(
    fd: impl AsFd,
    buf: &mut bytes::BytesMut,
    at_least: usize,
) -> std::io::Result<usize> {
    buf.reserve(at_least);
    let ((filled, _), _) = rustix::net::recv(
        fd,
        buf.spare_capacity_mut(),
        rustix::net::RecvFlags::DONTWAIT,
    )?;
    let n = filled.len();
    // SAFETY: `recv` initialised the first `n` bytes of the spare capacity.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// A non-blocking, close-on-exec pipe for waking a thread out of `poll`: `(read, write)`.
///
/// # Errors
///
/// The error of `pipe2`.
pub fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    use rustix::pipe::PipeFlags;
    Ok(rustix::pipe::pipe_with(
        PipeFlags::CLOEXEC | PipeFlags::NONBLOCK,
    )?)
}

/// Writes one byte to a wake-up pipe. A full pipe already holds a wake-up, so a failed
/// write loses nothing.
pub fn poke(tx: &OwnedFd) {
    let _ = rustix::io::write(tx, &[1]);
}

/// Empties a wake-up pipe.
pub fn drain(rx: &OwnedFd) {
    let mut sink = [0u8; 64];
    while rustix::io::read(rx, &mut sink).is_ok_and(|n| n > 0) {}
}

/// Asks for a send buffer of `bytes` on a socket (the system may cap it). A larger buffer
/// lets a sender queue more before it must wait for the reader, so large messages and
/// bursts take fewer system calls and wake-ups.
pub fn set_send_buffer(fd: impl AsFd, bytes: usize) {
    let _ = rustix::net::sockopt::set_socket_send_buffer_size(fd, bytes);
}
