//! Two byte rings in memory shared by two processes on one machine, and passing file
//! descriptors over a Unix socket.
//!
//! A [`Region`] is one anonymous shared-memory file (`memfd`) holding two
//! single-producer single-consumer byte rings: ring 0 carries bytes from the side that
//! created the region ([`Side::A`], the hub) to the other one ([`Side::B`], the child),
//! ring 1 the other way. They carry the same byte stream of frames that a Unix socket
//! carries; the socket stays, for wake-ups and for noticing that the other process died.
//!
//! # The protocol
//!
//! Each side keeps its own index locally and only *publishes* it: the producer its
//! `tail`, the consumer its `head`, both counts of bytes since the start that never wrap
//! in practice (a `u64` of bytes). Whatever a side reads of the other side's index is
//! checked before use, because the other process may be buggy or hostile: a bad index is
//! [`ShmError::Corrupt`], from then on for every call, and the connection should be
//! closed. The data bytes themselves are opaque here; the frame decoder above checks them.
//!
//! Waiting uses two flags per ring and the socket:
//!
//! - a consumer that finds nothing calls [`Consumer::prepare_sleep`]; when it says to
//!   sleep, the consumer waits for the socket to become readable, then drains it and
//!   calls [`Consumer::cancel_sleep`]. A producer that publishes bytes learns from
//!   [`Written::wake_peer`] that the consumer was going to sleep, and then sends one byte
//!   on the socket;
//! - a producer that finds no room calls [`Producer::prepare_wait_for_room`], and in the
//!   same way a consumer learns from [`Read::wake_peer`] that it should send a wake-up.
//!
//! The flag is set, then a sequentially consistent fence, then the index is checked again
//! on one side; the index is published, then the same fence, then the flag is read on the
//! other: at least one of the two sees the other's store, so a wake-up is never lost. The
//! side that sends a wake-up swaps the flag back to zero, so there is at most one per
//! sleep. A wake-up can arrive when there is nothing to do (the sleeper found work on its
//! own meanwhile); the sleeper checks again and sleeps again.
//!
//! # The layout
//!
//! | offset | size | content |
//! |---|---|---|
//! | 0 | 8 | magic, [`MAGIC`] |
//! | 8 | 4 | version, [`VERSION`] |
//! | 12 | 4 | capacity `C` of each ring's data area, in bytes |
//! | 64 + 256 r | 64 | ring r: the producer's tail (`u64`), alone on its cache line |
//! | 128 + 256 r | 64 | ring r: the consumer's head (`u64`) |
//! | 192 + 256 r | 64 | ring r: the producer's "waiting for room" flag (`u32`, non-zero is set) |
//! | 256 + 256 r | 64 | ring r: the consumer's "sleeping" flag (`u32`, non-zero is set) |
//! | 4096 + C r | C | ring r's data: byte `i` of the stream is at `i mod C` |
//!
//! for r = 0 and 1; the region is `4096 + 2 C` bytes. Numbers are in the machine's byte
//! order (both processes run on the same machine).
//!
//! ```
//! # #[cfg(target_os = "linux")] {
//! use yukicomm_link::shm::{Region, Side};
//!
//! let region = Region::create(4096).unwrap();
//! // The other process would get `region.fd()` with `send_fds` and open it with
//! // `Region::open`; here a second mapping in the same process stands in for it.
//! let other = Region::open(rustix::io::dup(region.fd()).unwrap()).unwrap();
//! let (mut a_tx, _a_rx) = region.split(Side::A);
//! let (_b_tx, mut b_rx) = other.split(Side::B);
//!
//! assert_eq!(a_tx.write(b"frame").unwrap().n, 5);
//! let mut buf = bytes::BytesMut::new();
//! assert_eq!(b_rx.read_into(&mut buf, usize::MAX).unwrap().n, 5);
//! assert_eq!(&buf[..], b"frame");
//! # }
//! ```

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

#[cfg(target_os = "linux")]
use rustix::fs::{MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// The first eight bytes of a region.
pub const MAGIC: u64 = u64::from_le_bytes(*b"yukiring");
/// The layout's version, after the magic.
pub const VERSION: u32 = 1;
/// The smallest capacity of a ring: 4 KiB.
pub const MIN_CAPACITY: usize = 4 << 10;
/// The largest capacity of a ring: 64 MiB.
pub const MAX_CAPACITY: usize = 64 << 20;
/// The capacity of each ring unless told otherwise: 1 MiB.
pub const DEFAULT_CAPACITY: usize = 1 << 20;

/// The size of a cache line, which the indices and flags each have for themselves.
const LINE: usize = 64;
/// The offset of ring 0's control block; ring 1's follows it.
const CONTROL: usize = LINE;
/// The size of a ring's control block: the tail, the head and the two flags.
const CONTROL_SIZE: usize = 4 * LINE;
/// Offsets in a control block.
const TAIL: usize = 0;
const HEAD: usize = LINE;
const PRODUCER_WAITING: usize = 2 * LINE;
const CONSUMER_SLEEPING: usize = 3 * LINE;
/// The offset of ring 0's data area (one page, so both data areas are page-aligned).
const DATA: usize = 4096;
/// The header's fields: magic, version, capacity.
const HEADER_SIZE: usize = 16;
/// The most descriptors Linux passes in one message (`SCM_MAX_FD`).
const SCM_MAX_FD: usize = 253;

const _: () = assert!(CONTROL + 2 * CONTROL_SIZE <= DATA);

/// What went wrong with a region or a ring.
#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    /// The other process published an index that cannot be, so it is buggy or hostile:
    /// every later call on the same producer or consumer fails the same way, and the
    /// connection should be closed.
    #[error("shared-memory ring corrupt: {0}")]
    Corrupt(String),
    /// [`Region::open`] refused a region: it is not sealed, or its size or header is not
    /// what this version makes.
    #[error("shared-memory region refused: {0}")]
    Refused(String),
    /// A system call failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl From<rustix::io::Errno> for ShmError {
    fn from(e: rustix::io::Errno) -> Self {
        ShmError::Io(e.into())
    }
}

impl From<ShmError> for io::Error {
    fn from(e: ShmError) -> Self {
        match e {
            ShmError::Io(e) => e,
            e => io::Error::new(io::ErrorKind::InvalidData, e),
        }
    }
}

/// Which end of a region a process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The process that created the region: produces on ring 0, consumes ring 1.
    A,
    /// The process that opened it: produces on ring 1, consumes ring 0.
    B,
}

/// What [`Producer::write`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// How many bytes it wrote (0 when the ring is full).
    pub n: usize,
    /// Whether the consumer had said it was going to sleep: the caller sends it a
    /// wake-up (one byte on the socket).
    pub wake_peer: bool,
}

/// What [`Consumer::read_into`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Read {
    /// How many bytes it appended (0 when the ring is empty).
    pub n: usize,
    /// Whether the producer had said it was waiting for room: the caller sends it a
    /// wake-up (one byte on the socket).
    pub wake_peer: bool,
}

/// The size of a region whose rings hold `capacity` bytes each.
fn region_size(capacity: usize) -> usize {
    DATA + 2 * capacity
}

/// Whether this platform has the shared-memory path (Linux: `memfd` with seals).
/// Elsewhere [`Region::create`] and [`Region::open`] refuse, and connections stay on
/// their sockets.
pub const SUPPORTED: bool = cfg!(target_os = "linux");

/// `MSG_NOSIGNAL` where it exists (a write to a dead peer is an error, not `SIGPIPE`).
#[cfg(target_os = "linux")]
pub(crate) const NOSIGNAL: SendFlags = SendFlags::NOSIGNAL;
#[cfg(not(target_os = "linux"))]
pub(crate) const NOSIGNAL: SendFlags = SendFlags::empty();

/// Received descriptors close-on-exec, where the system does it on receipt.
#[cfg(target_os = "linux")]
const CMSG_CLOEXEC: RecvFlags = RecvFlags::CMSG_CLOEXEC;
#[cfg(not(target_os = "linux"))]
const CMSG_CLOEXEC: RecvFlags = RecvFlags::empty();

/// A new anonymous memory file of a region's size, sealed against shrinking, growing
/// and further sealing.
#[cfg(target_os = "linux")]
fn memory_file(capacity: usize) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(
        "yukicomm-ring",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    rustix::fs::ftruncate(&fd, region_size(capacity) as u64)?;
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
    Ok(fd)
}

#[cfg(not(target_os = "linux"))]
fn memory_file(_capacity: usize) -> io::Result<OwnedFd> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "shared memory between processes is only used on Linux",
    ))
}

/// Checks that a memory file from another process cannot change size under a mapping.
#[cfg(target_os = "linux")]
fn check_seals(fd: &OwnedFd) -> Result<(), ShmError> {
    let needed = SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL;
    let seals = rustix::fs::fcntl_get_seals(fd)?;
    if !seals.contains(needed) {
        return Err(ShmError::Refused(format!(
            "the memory file must be sealed against shrinking, growing and sealing; \
             its seals are {seals:?}"
        )));
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn check_seals(_fd: &OwnedFd) -> Result<(), ShmError> {
    Err(ShmError::Refused(
        "shared memory between processes is only used on Linux".into(),
    ))
}

fn valid_capacity(capacity: usize) -> bool {
    capacity.is_power_of_two() && (MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity)
}

/// A shared mapping of a whole region, unmapped on drop.
///
/// Invariants: `ptr` is the page-aligned start of a `MAP_SHARED`, readable and writable
/// mapping of `len == region_size(capacity)` bytes of a file that cannot shrink, mapped
/// until this value is dropped.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    capacity: usize,
}

// SAFETY: the mapping is plain memory that stays mapped while the value lives; every
// access to it goes through atomics (control words) or raw copies whose exclusivity the
// ring protocol provides (data areas), never through references that assume no one else
// writes, so it may be used from any thread.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps the whole of `fd`, which must be `region_size(capacity)` bytes and sealed
    /// against shrinking (or be our own, not yet shared).
    fn new(fd: BorrowedFd<'_>, capacity: usize) -> io::Result<Mapping> {
        let len = region_size(capacity);
        // SAFETY: a new mapping at an address the system picks replaces nothing of ours.
        // It is `len` bytes of a file of `len` bytes that cannot shrink, so no access
        // within it can fault.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                0,
            )?
        };
        let ptr = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned a null pointer"))?;
        Ok(Mapping { ptr, len, capacity })
    }

    /// The `u64` at `offset`, a constant multiple of 8 within the control blocks.
    fn u64_at(&self, offset: usize) -> &AtomicU64 {
        debug_assert!(offset.is_multiple_of(8) && offset + 8 <= DATA);
        // SAFETY: `offset + 8 <= DATA < len`, and the mapping is page-aligned, so the
        // pointer is in bounds and aligned for a `u64`; the memory stays mapped as long
        // as `self` is borrowed. The other process may write it at any time, which atomic
        // accesses allow; any bit pattern is a valid `u64`.
        unsafe { AtomicU64::from_ptr(self.ptr.as_ptr().add(offset).cast()) }
    }

    /// The `u32` at `offset`, a constant multiple of 4 within the control blocks.
    fn u32_at(&self, offset: usize) -> &AtomicU32 {
        debug_assert!(offset.is_multiple_of(4) && offset + 4 <= DATA);
        // SAFETY: as in `u64_at`, for a `u32`.
        unsafe { AtomicU32::from_ptr(self.ptr.as_ptr().add(offset).cast()) }
    }

    fn tail(&self, ring: usize) -> &AtomicU64 {
        self.u64_at(CONTROL + ring * CONTROL_SIZE + TAIL)
    }

    fn head(&self, ring: usize) -> &AtomicU64 {
        self.u64_at(CONTROL + ring * CONTROL_SIZE + HEAD)
    }

    fn producer_waiting(&self, ring: usize) -> &AtomicU32 {
        self.u32_at(CONTROL + ring * CONTROL_SIZE + PRODUCER_WAITING)
    }

    fn consumer_sleeping(&self, ring: usize) -> &AtomicU32 {
        self.u32_at(CONTROL + ring * CONTROL_SIZE + CONSUMER_SLEEPING)
    }

    /// The start of ring `ring`'s data area.
    fn data(&self, ring: usize) -> *mut u8 {
        // SAFETY: `DATA + ring * capacity` with `ring <= 1` is within the mapping of
        // `DATA + 2 * capacity` bytes.
        unsafe { self.ptr.as_ptr().add(DATA + ring * self.capacity) }
    }

    /// Copies `src` into ring `ring` starting at stream position `pos`, wrapping around.
    ///
    /// # Safety
    ///
    /// `src.len() <= capacity`, and the caller is the ring's producer and owns the bytes
    /// `pos..pos + src.len()` of the stream: the consumer has published a head of at
    /// least `pos + src.len() - capacity`, so it no longer reads them.
    unsafe fn copy_in(&self, ring: usize, pos: u64, src: &[u8]) {
        let at = (pos & (self.capacity as u64 - 1)) as usize;
        let first = src.len().min(self.capacity - at);
        let data = self.data(ring);
        // SAFETY: `at + first <= capacity` and `src.len() - first <= at`, so both copies
        // stay in the data area, which does not overlap `src` (our own memory). Raw
        // pointer copies, not slices: the other process may (wrongly) write this memory
        // at the same time, which could only garble bytes that are opaque here.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), data.add(at), first);
            std::ptr::copy_nonoverlapping(src.as_ptr().add(first), data, src.len() - first);
        }
    }

    /// Copies `len` bytes of ring `ring` from stream position `pos` to `dst`.
    ///
    /// # Safety
    ///
    /// `len <= capacity`, `dst` is valid for `len` bytes of writes and not in the
    /// mapping, and the caller is the ring's consumer and has seen (with acquire
    /// ordering) a tail of at least `pos + len`.
    unsafe fn copy_out(&self, ring: usize, pos: u64, dst: *mut u8, len: usize) {
        let at = (pos & (self.capacity as u64 - 1)) as usize;
        let first = len.min(self.capacity - at);
        let data = self.data(ring);
        // SAFETY: both copies stay in the data area (as in `copy_in`) and in `dst`'s
        // `len` bytes, which are not in the mapping. Raw pointer copies, never a slice of
        // the mapping: the other process may write this memory concurrently if it breaks
        // the protocol, and then we copy garbage, which the frame decoder rejects.
        unsafe {
            std::ptr::copy_nonoverlapping(data.add(at), dst, first);
            std::ptr::copy_nonoverlapping(data, dst.add(first), len - first);
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr` and `len` are those of our mapping, and nothing refers to it any
        // more: every borrow of it borrows `self`.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The shared-memory region between two processes: two rings, one each way.
///
/// Create it on side A with [`Region::create`], pass [`Region::fd`] to the other process
/// (with [`send_fds`]), which opens it with [`Region::open`]; each side then keeps the
/// halves that [`Region::split`] gives it.
pub struct Region {
    fd: OwnedFd,
    map: Arc<Mapping>,
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("fd", &self.fd)
            .field("capacity", &self.map.capacity)
            .finish()
    }
}

impl Region {
    /// Creates a region whose two rings hold `capacity` bytes each (a power of two from
    /// [`MIN_CAPACITY`] to [`MAX_CAPACITY`]; [`DEFAULT_CAPACITY`] is a good start): an
    /// anonymous, close-on-exec memory file, sealed so that it can neither shrink nor
    /// grow, mapped shared.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a bad capacity, or the error of a system call.
    pub fn create(capacity: usize) -> io::Result<Region> {
        if !valid_capacity(capacity) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a ring's capacity must be a power of two from {MIN_CAPACITY} to \
                     {MAX_CAPACITY}, not {capacity}"
                ),
            ));
        }
        let fd = memory_file(capacity)?;
        let map = Mapping::new(fd.as_fd(), capacity)?;
        // The file is all zeroes: both indices and all flags start at zero. The header is
        // written before the descriptor leaves this process; passing it is a system call,
        // which orders these stores before anything the other process does.
        map.u64_at(0).store(MAGIC, Ordering::Relaxed);
        map.u32_at(8).store(VERSION, Ordering::Relaxed);
        map.u32_at(12).store(capacity as u32, Ordering::Relaxed);
        Ok(Region {
            fd,
            map: Arc::new(map),
        })
    }

    /// Opens a region that another process created and passed over (side B).
    ///
    /// The descriptor comes from another process, so it is checked before it is mapped:
    /// it must be sealed against shrinking, growing and further sealing (a file that
    /// could shrink under the mapping would kill this process with `SIGBUS`), its header
    /// must have our magic and version and a valid capacity, and its size must be exactly
    /// what that capacity makes.
    ///
    /// # Errors
    ///
    /// [`ShmError::Refused`] when a check fails, [`ShmError::Io`] when a system call
    /// does (for instance, `fd` is not a memory file or not writable).
    pub fn open(fd: OwnedFd) -> Result<Region, ShmError> {
        check_seals(&fd)?;
        // Sealed: the size cannot change any more.
        let size = rustix::fs::fstat(&fd)?.st_size;
        let mut header = [0u8; HEADER_SIZE];
        let got = rustix::io::pread(&fd, &mut header[..], 0)?;
        if got < HEADER_SIZE {
            return Err(ShmError::Refused(format!(
                "the memory file is {size} bytes, too small for a header"
            )));
        }
        let magic = u64::from_ne_bytes(header[0..8].try_into().expect("8 bytes"));
        let version = u32::from_ne_bytes(header[8..12].try_into().expect("4 bytes"));
        let capacity = u32::from_ne_bytes(header[12..16].try_into().expect("4 bytes"));
        if magic != MAGIC {
            return Err(ShmError::Refused(format!(
                "bad magic {magic:#018x}, expected {MAGIC:#018x}"
            )));
        }
        if version != VERSION {
            return Err(ShmError::Refused(format!(
                "version {version}, this side speaks {VERSION}"
            )));
        }
        let capacity = capacity as usize;
        if !valid_capacity(capacity) {
            return Err(ShmError::Refused(format!(
                "capacity {capacity} is not a power of two from {MIN_CAPACITY} to \
                 {MAX_CAPACITY}"
            )));
        }
        let expected = region_size(capacity);
        if u64::try_from(size).ok() != Some(expected as u64) {
            return Err(ShmError::Refused(format!(
                "the memory file is {size} bytes, a capacity of {capacity} makes {expected}"
            )));
        }
        let map = Mapping::new(fd.as_fd(), capacity)?;
        Ok(Region {
            fd,
            map: Arc::new(map),
        })
    }

    /// The memory file, to pass to the other process (with [`send_fds`]) before
    /// [`split`](Region::split), which closes it.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The capacity of each ring, in bytes.
    pub fn capacity(&self) -> usize {
        self.map.capacity
    }

    /// This side's producer and consumer: [`Side::A`] produces on ring 0 and consumes
    /// ring 1, [`Side::B`] the reverse. The memory file is closed; the mapping stays
    /// until both halves are dropped.
    pub fn split(self, side: Side) -> (Producer, Consumer) {
        let (tx, rx) = match side {
            Side::A => (0, 1),
            Side::B => (1, 0),
        };
        let capacity = self.map.capacity as u64;
        (
            Producer {
                map: Arc::clone(&self.map),
                ring: tx,
                capacity,
                tail: 0,
                last_head: 0,
                corrupt: None,
            },
            Consumer {
                map: self.map,
                ring: rx,
                capacity,
                head: 0,
                last_tail: 0,
                corrupt: None,
            },
        )
    }
}

/// The writing end of one ring. One thread at a time uses it (it is `Send`; wrap it in a
/// mutex to share it).
pub struct Producer {
    map: Arc<Mapping>,
    ring: usize,
    capacity: u64,
    /// How many bytes we have published: ours, never read back from the shared memory.
    tail: u64,
    /// The consumer's head when we last read it, checked.
    last_head: u64,
    /// Why the ring is corrupt, once it is.
    corrupt: Option<String>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("ring", &self.ring)
            .field("capacity", &self.capacity)
            .field("tail", &self.tail)
            .field("last_head", &self.last_head)
            .field("corrupt", &self.corrupt)
            .finish()
    }
}

impl Producer {
    /// The capacity of the ring, in bytes.
    pub fn capacity(&self) -> usize {
        self.capacity as usize
    }

    /// How many bytes fit in the ring now.
    ///
    /// # Errors
    ///
    /// [`ShmError::Corrupt`] when the consumer's head is impossible (now or before).
    pub fn free(&mut self) -> Result<usize, ShmError> {
        let head = self.head()?;
        Ok((self.capacity - (self.tail - head)) as usize)
    }

    /// Reads and checks the consumer's head: never backwards, never past our tail.
    fn head(&mut self) -> Result<u64, ShmError> {
        if let Some(why) = &self.corrupt {
            return Err(ShmError::Corrupt(why.clone()));
        }
        // Acquire: the consumer has finished copying out the bytes before `head`, so we
        // may overwrite them.
        let head = self.map.head(self.ring).load(Ordering::Acquire);
        let why = if head < self.last_head {
            format!(
                "ring {}: the consumer's head went backwards from {} to {head}",
                self.ring, self.last_head
            )
        } else if head > self.tail {
            format!(
                "ring {}: the consumer's head {head} is past the producer's tail {}",
                self.ring, self.tail
            )
        } else {
            self.last_head = head;
            return Ok(head);
        };
        self.corrupt = Some(why.clone());
        Err(ShmError::Corrupt(why))
    }

    /// Copies as much of `buf` as fits into the ring (possibly nothing) and publishes it.
    ///
    /// # Errors
    ///
    /// [`ShmError::Corrupt`] when the consumer's head is impossible (now or before).
    pub fn write(&mut self, buf: &[u8]) -> Result<Written, ShmError> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    /// Copies as much of `bufs`, in order, as fits into the ring (possibly nothing) and
    /// publishes it.
    ///
    /// # Errors
    ///
    /// [`ShmError::Corrupt`] when the consumer's head is impossible (now or before).
    pub fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> Result<Written, ShmError> {
        let mut room = self.free()?;
        let mut n = 0;
        for buf in bufs {
            if room == 0 {
                break;
            }
            let take = buf.len().min(room);
            // SAFETY: `take <= room <= capacity`, and the bytes from our tail to the
            // consumer's checked head plus the capacity are ours to write.
            unsafe {
                self.map
                    .copy_in(self.ring, self.tail + n as u64, &buf[..take]);
            }
            n += take;
            room -= take;
        }
        if n == 0 {
            return Ok(Written {
                n: 0,
                wake_peer: false,
            });
        }
        self.tail += n as u64;
        // Release: the bytes are in place before the consumer can see the new tail.
        self.map.tail(self.ring).store(self.tail, Ordering::Release);
        // The other half of `Consumer::prepare_sleep`: either it sees our tail, or we see
        // its flag.
        fence(Ordering::SeqCst);
        let sleeping = self.map.consumer_sleeping(self.ring);
        let wake_peer =
            sleeping.load(Ordering::Relaxed) != 0 && sleeping.swap(0, Ordering::Relaxed) != 0;
        Ok(Written { n, wake_peer })
    }

    /// Says that this producer is about to wait for room, then looks again: `true` when
    /// there is room after all (do not wait; the flag is cleared again), `false` when the
    /// caller should wait for a wake-up from the consumer, then call
    /// [`cancel_wait`](Producer::cancel_wait).
    ///
    /// # Errors
    ///
    /// [`ShmError::Corrupt`] when the consumer's head is impossible (now or before).
    pub fn prepare_wait_for_room(&mut self) -> Result<bool, ShmError> {
        if let Some(why) = &self.corrupt {
            return Err(ShmError::Corrupt(why.clone()));
        }
        self.map
            .producer_waiting(self.ring)
            .store(1, Ordering::Relaxed);
        // The other half of `Consumer::read_into`: either we see its head, or it sees our
        // flag.
        fence(Ordering::SeqCst);
        let room = match self.free() {
            Ok(room) => room,
            Err(e) => {
                self.cancel_wait();
                return Err(e);
            }
        };
        if room > 0 {
            self.cancel_wait();
            return Ok(true);
        }
        Ok(false)
    }

    /// Clears the "waiting for room" flag, after a wake-up (or to give up waiting).
    pub fn cancel_wait(&mut self) {
        self.map
            .producer_waiting(self.ring)
            .store(0, Ordering::Relaxed);
    }
}

/// The reading end of one ring. One thread at a time uses it (it is `Send`; wrap it in a
/// mutex to share it).
pub struct Consumer {
    map: Arc<Mapping>,
    ring: usize,
    capacity: u64,
    /// How many bytes we have consumed: ours, never read back from the shared memory.
    head: u64,
    /// The producer's tail when we last read it, checked.
    last_tail: u64,
    /// Why the ring is corrupt, once it is.
    corrupt: Option<String>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("ring", &self.ring)
            .field("capacity", &self.capacity)
            .field("head", &self.head)
            .field("last_tail", &self.last_tail)
            .field("corrupt", &self.corrupt)
            .finish()
    }
}

impl Consumer {
    /// The capacity of the ring, in bytes.
    pub fn capacity(&self) -> usize {
        self.capacity as usize
    }

    /// How many bytes there are to read now.
    ///
    /// # Errors
    ///
    /// [`ShmError::Corrupt`] when the producer's tail is impossible (now or before).
    pub fn available(&mut self) -> Result<usize, ShmError> {
        let tail = self.tail()?;
        Ok((tail - self.head) as usize)
    }

    /// Reads and checks the producer's tail: never backwards, never more than the
    /// capacity ahead of our head.
    fn tail(&mut self) -> Result<u64, ShmError> {
        if let Some(why) = &self.corrupt {
            return Err(ShmError::Corrupt(why.clone()));
        }
        // Acquire: the bytes before `tail` are in place.
        let tail = self.map.tail(self.ring).load(Ordering::Acquire);
        // `head <= last_tail`, so a tail that did not go backwards is not behind the head.
        let why = if tail < self.last_tail {
            format!(
                "ring {}: the producer's tail went backwards from {} to {tail}",
                self.ring, self.last_tail
            )
        } else if tail - self.head > self.capacity {
            format!(
                "ring {}: the producer's tail {tail} is more than the capacity {} ahead of \
                 the consumer's head {}",
                self.ring, self.capacity, self.head
            )
        } else {
            self.last_tail = tail;
            return Ok(tail);
        };
        self.corrupt = Some(why.clone());
        Err(ShmError::Corrupt(why))
    }

    /// Appends up to `max` of the bytes there are to `buf` (reserving room in it), and
    /// publishes that they are consumed.
    ///
    /// # Errors
    ///
    /// [`ShmError::Corrupt`] when the producer's tail is impossible (now or before).
    pub fn read_into(&mut self, buf: &mut bytes::BytesMut, max: usize) -> Result<Read, ShmError> {
        let n = self.available()?.min(max);
        if n == 0 {
            return Ok(Read {
                n: 0,
                wake_peer: false,
            });
        }
        buf.reserve(n);
        let dst = buf.spare_capacity_mut().as_mut_ptr().cast::<u8>();
        // SAFETY: `n <= available <= capacity`; `dst` has room for `n` bytes after the
        // `reserve`, and is our own memory; the tail we read (with acquire) is at least
        // `head + n`.
        unsafe { self.map.copy_out(self.ring, self.head, dst, n) };
        // SAFETY: the copy initialised the first `n` bytes of the spare capacity.
        unsafe { buf.set_len(buf.len() + n) };
        self.head += n as u64;
        // Release: we are done reading these bytes before the producer may overwrite them.
        self.map.head(self.ring).store(self.head, Ordering::Release);
        // The other half of `Producer::prepare_wait_for_room`.
        fence(Ordering::SeqCst);
        let waiting = self.map.producer_waiting(self.ring);
        let wake_peer =
            waiting.load(Ordering::Relaxed) != 0 && waiting.swap(0, Ordering::Relaxed) != 0;
        Ok(Read { n, wake_peer })
    }

    /// Says that this consumer is about to sleep, then looks again: `true` when there are
    /// bytes after all (do not sleep; the flag is cleared again), `false` when the caller
    /// should sleep until the socket is readable (a wake-up from the producer, or the
    /// other process gone), then call [`cancel_sleep`](Consumer::cancel_sleep).
    ///
    /// # Errors
    ///
    /// [`ShmError::Corrupt`] when the producer's tail is impossible (now or before).
    pub fn prepare_sleep(&mut self) -> Result<bool, ShmError> {
        if let Some(why) = &self.corrupt {
            return Err(ShmError::Corrupt(why.clone()));
        }
        self.map
            .consumer_sleeping(self.ring)
            .store(1, Ordering::Relaxed);
        // The other half of `Producer::write_vectored`.
        fence(Ordering::SeqCst);
        let available = match self.available() {
            Ok(available) => available,
            Err(e) => {
                self.cancel_sleep();
                return Err(e);
            }
        };
        if available > 0 {
            self.cancel_sleep();
            return Ok(true);
        }
        Ok(false)
    }

    /// Clears the "sleeping" flag, after waking (or to give up sleeping).
    pub fn cancel_sleep(&mut self) {
        self.map
            .consumer_sleeping(self.ring)
            .store(0, Ordering::Relaxed);
    }
}

/// Sends `bytes` with the descriptors `fds` attached (`SCM_RIGHTS`) on a Unix socket,
/// without `SIGPIPE` if the other end is closed. On a stream socket, the descriptors go
/// with the first byte, so `bytes` must not be empty when `fds` is not. Returns how many
/// bytes were sent; the descriptors went with them unless that is 0.
///
/// # Errors
///
/// `InvalidInput` for descriptors without bytes or more than 253 descriptors, or the
/// error of `sendmsg`.
pub fn send_fds(socket: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
    if bytes.is_empty() && !fds.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "descriptors need at least one byte to go with",
        ));
    }
    if fds.len() > SCM_MAX_FD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("at most {SCM_MAX_FD} descriptors go in one message"),
        ));
    }
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("no room for the descriptors"));
    }
    Ok(rustix::net::sendmsg(
        socket,
        &[IoSlice::new(bytes)],
        &mut control,
        NOSIGNAL,
    )?)
}

/// Receives bytes into `buf` from a Unix socket, and the descriptors that came with them
/// (`SCM_RIGHTS`, close-on-exec) into `fds_out`: at most `max_fds` of them, the others
/// are closed. Returns how many bytes were received, 0 at end of stream.
///
/// # Errors
///
/// `InvalidData` when the system truncated the control message (descriptors were lost;
/// the bytes received with it are lost too, and the connection should be closed), or the
/// error of `recvmsg` (`WouldBlock` on a non-blocking socket with nothing to read).
pub fn recv_fds(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
    fds_out: &mut Vec<OwnedFd>,
    max_fds: usize,
) -> io::Result<usize> {
    // Room for as many descriptors as one message can carry, so that extra ones arrive
    // (to be closed here) instead of truncating the control message.
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(SCM_MAX_FD))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = rustix::net::recvmsg(
        socket,
        &mut [io::IoSliceMut::new(buf)],
        &mut control,
        CMSG_CLOEXEC,
    )?;
    let mut taken = 0;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = message {
            for fd in fds {
                if taken < max_fds && !msg.flags.contains(ReturnFlags::CTRUNC) {
                    fds_out.push(fd);
                    taken += 1;
                }
                // Otherwise `fd` is dropped here, which closes it.
            }
        }
    }
    if msg.flags.contains(ReturnFlags::CTRUNC) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the control message was truncated: descriptors were lost",
        ));
    }
    Ok(msg.bytes)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use bytes::{Buf, BytesMut};
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::os::unix::net::UnixStream;
    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command, Stdio};
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    /// Stream byte `i` is `i mod P`: a prime, so the pattern never lines up with a ring.
    const P: u64 = 251;
    /// How long a side waits for a wake-up before the test fails (a lost wake-up).
    const WAIT: Duration = Duration::from_secs(5);
    /// Tells the test `shm_child` that it is the child of `two_processes_*`, and on which
    /// descriptor its socket is.
    const CHILD_ENV: &str = "YUKICOMM_SHM_TEST_CHILD_FD";

    fn pattern_table() -> &'static [u8] {
        static TABLE: OnceLock<Vec<u8>> = OnceLock::new();
        TABLE.get_or_init(|| (0..P * 1024).map(|i| (i % P) as u8).collect())
    }

    /// The `len` bytes of the stream from position `pos` (`len` up to about 250 KiB).
    fn pat(pos: u64, len: usize) -> &'static [u8] {
        &pattern_table()[(pos % P) as usize..][..len]
    }

    /// Checks that `data` is the stream from position `pos`.
    fn check(pos: u64, data: &[u8]) {
        let mut at = pos;
        for chunk in data.chunks(64 << 10) {
            if chunk != pat(at, chunk.len()) {
                let i = chunk
                    .iter()
                    .zip(pat(at, chunk.len()))
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                panic!(
                    "byte {} of the stream is {}, expected {}",
                    at + i as u64,
                    chunk[i],
                    pat(at + i as u64, 1)[0]
                );
            }
            at += chunk.len() as u64;
        }
    }

    /// A small deterministic generator of sizes.
    fn next(seed: &mut u64) -> u64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *seed >> 33
    }

    /// A second mapping of `region`'s file, as the other process would have.
    fn reopen(region: &Region) -> Region {
        Region::open(rustix::io::dup(region.fd()).unwrap()).unwrap()
    }

    /// Side A's and side B's halves of one region, through two mappings.
    fn pair(capacity: usize) -> ((Producer, Consumer), (Producer, Consumer)) {
        let a = Region::create(capacity).unwrap();
        let b = reopen(&a);
        (a.split(Side::A), b.split(Side::B))
    }

    /// Sends a wake-up; a full socket already holds one.
    fn wake(sock: &UnixStream) {
        let _ = rustix::net::send(sock, &[1], SendFlags::DONTWAIT | SendFlags::NOSIGNAL);
    }

    /// Waits up to `WAIT` for the socket to be readable, then empties it: `false` when
    /// the other end is closed (end of stream, or reset: a Unix socket whose peer closed
    /// with bytes unread in its own queue is reset). A timeout fails the test.
    fn wait_and_drain(sock: &UnixStream, who: &str) -> bool {
        let mut fds = [crate::sys::pollfd(sock.as_fd())];
        let woke = crate::sys::wait_readable(&mut fds, Some(Instant::now() + WAIT)).unwrap();
        assert!(woke, "{who}: no wake-up within {WAIT:?} (a lost wake-up)");
        let mut sink = [0u8; 64];
        loop {
            match rustix::net::recv(sock, &mut sink, rustix::net::RecvFlags::DONTWAIT) {
                Ok((0, _)) | Err(rustix::io::Errno::CONNRESET) => return false,
                Ok(_) => {}
                Err(rustix::io::Errno::AGAIN) => return true,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => panic!("{who}: recv: {e}"),
            }
        }
    }

    /// One thread's both halves with nothing to do: sleeps until woken (unless there is
    /// work after all); `false` when the other end of the socket is closed.
    fn idle(tx: &mut Producer, rx: &mut Consumer, sock: &UnixStream, want_room: bool) -> bool {
        let go = rx.prepare_sleep().unwrap() || (want_room && tx.prepare_wait_for_room().unwrap());
        let alive = go || wait_and_drain(sock, "idle side");
        rx.cancel_sleep();
        tx.cancel_wait();
        alive
    }

    #[test]
    fn halves_are_send() {
        fn send<T: Send>() {}
        send::<Producer>();
        send::<Consumer>();
        send::<Region>();
    }

    #[test]
    fn create_checks_capacity_and_seals() {
        for bad in [
            0,
            3000,
            MIN_CAPACITY / 2,
            MIN_CAPACITY + 1,
            MAX_CAPACITY * 2,
        ] {
            let e = Region::create(bad).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "capacity {bad}");
        }
        let region = Region::create(DEFAULT_CAPACITY).unwrap();
        assert_eq!(region.capacity(), DEFAULT_CAPACITY);
        let seals = rustix::fs::fcntl_get_seals(region.fd()).unwrap();
        assert!(seals.contains(SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL));
        // Sealed: neither this process nor the other can change the size.
        assert!(rustix::fs::ftruncate(region.fd(), 4096).is_err());
        assert!(
            rustix::fs::ftruncate(region.fd(), region_size(DEFAULT_CAPACITY) as u64 * 2).is_err()
        );
        let size = rustix::fs::fstat(region.fd()).unwrap().st_size;
        assert_eq!(size as usize, DATA + 2 * DEFAULT_CAPACITY);
        // Anonymous: nothing in a file system to clean up if a process dies.
        let path = std::fs::read_link(format!("/proc/self/fd/{}", region.fd().as_raw_fd()));
        assert!(path
            .unwrap()
            .to_string_lossy()
            .starts_with("/memfd:yukicomm-ring"));
        let (tx, rx) = region.split(Side::A);
        assert_eq!(
            (tx.capacity(), rx.capacity()),
            (DEFAULT_CAPACITY, DEFAULT_CAPACITY)
        );
    }

    /// Many wrap-arounds with odd sizes, both rings, byte for byte, with `free` and
    /// `available` agreeing with what is in flight at every step.
    #[test]
    fn round_trip_both_rings() {
        let cap = MIN_CAPACITY;
        let ((mut a_tx, mut a_rx), (mut b_tx, mut b_rx)) = pair(cap);
        for (tx, rx) in [(&mut a_tx, &mut b_rx), (&mut b_tx, &mut a_rx)] {
            let (mut written, mut read) = (0u64, 0u64);
            let mut seed = 7;
            let mut buf = BytesMut::new();
            while read < 50 * cap as u64 {
                let in_flight = (written - read) as usize;
                assert_eq!(tx.free().unwrap(), cap - in_flight);
                assert_eq!(rx.available().unwrap(), in_flight);
                let len =
                    [1, 3, 7, 333, 4095, 4096, 5001, 17, 2049][(next(&mut seed) % 9) as usize];
                let w = if next(&mut seed).is_multiple_of(2) {
                    tx.write(pat(written, len)).unwrap()
                } else {
                    // The same bytes in three slices.
                    let all = pat(written, len);
                    let (x, rest) = all.split_at(len / 3);
                    let (y, z) = rest.split_at(rest.len() / 2);
                    tx.write_vectored(&[IoSlice::new(x), IoSlice::new(y), IoSlice::new(z)])
                        .unwrap()
                };
                assert_eq!(w.n, len.min(cap - in_flight));
                assert!(!w.wake_peer);
                written += w.n as u64;
                let max = [1, 5, 999, 4096, 3001, usize::MAX][(next(&mut seed) % 6) as usize];
                buf.clear();
                let r = rx.read_into(&mut buf, max).unwrap();
                assert_eq!(r.n, max.min((written - read) as usize));
                assert_eq!(buf.len(), r.n);
                assert!(!r.wake_peer);
                check(read, &buf);
                read += r.n as u64;
            }
            // Drain, then a full ring takes nothing and an empty one gives nothing.
            buf.clear();
            read += rx.read_into(&mut buf, usize::MAX).unwrap().n as u64;
            check(read - buf.len() as u64, &buf);
            assert_eq!(read, written);
            assert_eq!(rx.read_into(&mut buf, usize::MAX).unwrap().n, 0);
            assert_eq!(tx.write(pat(written, 2 * cap)).unwrap().n, cap);
            assert_eq!(tx.write(b"more").unwrap().n, 0);
            assert_eq!(tx.free().unwrap(), 0);
            buf.clear();
            assert_eq!(rx.read_into(&mut buf, usize::MAX).unwrap().n, cap);
            check(written, &buf);
        }
    }

    /// A wake-up is asked for once per sleep, and only after one was announced.
    #[test]
    fn wake_flags_once_per_sleep() {
        let ((mut tx, _), (_, mut rx)) = pair(MIN_CAPACITY);
        let mut buf = BytesMut::new();
        // The consumer goes to sleep on an empty ring: the next write wakes it, once.
        assert!(!rx.prepare_sleep().unwrap());
        let w = tx.write(b"abc").unwrap();
        assert_eq!((w.n, w.wake_peer), (3, true));
        assert!(!tx.write(b"def").unwrap().wake_peer);
        rx.cancel_sleep();
        // With bytes waiting, the consumer does not sleep, and leaves no flag behind.
        assert!(rx.prepare_sleep().unwrap());
        assert!(!tx.write(b"g").unwrap().wake_peer);
        // A producer with room does not wait.
        assert!(tx.prepare_wait_for_room().unwrap());
        assert!(!rx.read_into(&mut buf, 1).unwrap().wake_peer);
        // A full ring: the producer waits, and the next read wakes it, once.
        tx.write(&vec![0; MIN_CAPACITY]).unwrap();
        assert_eq!(tx.free().unwrap(), 0);
        assert!(!tx.prepare_wait_for_room().unwrap());
        let r = rx.read_into(&mut buf, 10).unwrap();
        assert_eq!((r.n, r.wake_peer), (10, true));
        assert!(!rx.read_into(&mut buf, 10).unwrap().wake_peer);
        tx.cancel_wait();
        // Nothing read, nothing written: no wake-up asked for, and the flags stay set.
        rx.read_into(&mut buf, usize::MAX).unwrap();
        assert!(!rx.prepare_sleep().unwrap());
        assert_eq!(
            tx.write(b"").unwrap(),
            Written {
                n: 0,
                wake_peer: false
            }
        );
        tx.write(&vec![0; MIN_CAPACITY]).unwrap();
        rx.cancel_sleep();
        assert!(!tx.prepare_wait_for_room().unwrap());
        assert!(rx.prepare_sleep().unwrap());
        rx.map.consumer_sleeping(0).store(1, Ordering::Relaxed);
        assert_eq!(
            tx.write(b"x").unwrap(),
            Written {
                n: 0,
                wake_peer: false
            }
        );
        assert_eq!(
            rx.read_into(&mut buf, 0).unwrap(),
            Read {
                n: 0,
                wake_peer: false
            }
        );
        assert_ne!(rx.map.consumer_sleeping(0).load(Ordering::Relaxed), 0);
        assert_ne!(rx.map.producer_waiting(0).load(Ordering::Relaxed), 0);
        rx.cancel_sleep();
        tx.cancel_wait();
        assert_eq!(rx.map.consumer_sleeping(0).load(Ordering::Relaxed), 0);
        assert_eq!(rx.map.producer_waiting(0).load(Ordering::Relaxed), 0);
    }

    /// Producer and consumer on two threads, waiting and waking over a socket pair.
    fn stream(capacity: usize, total: u64) {
        let ((mut tx, _), (_, mut rx)) = pair(capacity);
        let (tx_sock, rx_sock) = UnixStream::pair().unwrap();
        let producer = std::thread::spawn(move || {
            let (mut pos, mut seed, mut waits) = (0u64, 1u64, 0u64);
            while pos < total {
                let len =
                    ((next(&mut seed) as usize % (2 * capacity)) + 1).min((total - pos) as usize);
                let w = tx.write(pat(pos, len)).unwrap();
                if w.wake_peer {
                    wake(&tx_sock);
                }
                pos += w.n as u64;
                if w.n == 0 && !tx.prepare_wait_for_room().unwrap() {
                    waits += 1;
                    assert!(wait_and_drain(&tx_sock, "producer"), "the consumer is gone");
                    tx.cancel_wait();
                }
            }
            // The socket lives until the consumer is done too: closing it would read as
            // the producer's death.
            (waits, tx_sock)
        });
        let consumer = std::thread::spawn(move || {
            let (mut pos, mut seed, mut sleeps) = (0u64, 2u64, 0u64);
            let mut buf = BytesMut::with_capacity(2 * capacity);
            while pos < total {
                buf.clear();
                let max = (next(&mut seed) as usize % (2 * capacity)) + 1;
                let r = rx.read_into(&mut buf, max).unwrap();
                if r.wake_peer {
                    wake(&rx_sock);
                }
                check(pos, &buf);
                pos += r.n as u64;
                if r.n == 0 && !rx.prepare_sleep().unwrap() {
                    sleeps += 1;
                    assert!(wait_and_drain(&rx_sock, "consumer"), "the producer is gone");
                    rx.cancel_sleep();
                }
            }
            assert_eq!(rx.available().unwrap(), 0);
            (sleeps, rx_sock)
        });
        let sleeps = consumer.join();
        let waits = producer.join();
        let ((sleeps, _), (waits, _)) = (sleeps.unwrap(), waits.unwrap());
        eprintln!("{capacity}: {sleeps} sleeps, {waits} waits");
        // Both sides waited at some point, or the test did not test the protocol.
        assert!(sleeps + waits > 0, "nobody ever waited");
    }

    #[test]
    fn stream_threads_4k() {
        stream(MIN_CAPACITY, 16 << 20);
    }

    #[test]
    fn stream_threads_64k() {
        stream(64 << 10, 64 << 20);
    }

    /// A second mapping scribbling on the first one's shared indices.
    #[test]
    fn corrupt_tail_beyond_capacity() {
        let a = Region::create(MIN_CAPACITY).unwrap();
        let spy = reopen(&a);
        let b = reopen(&a);
        let (mut tx, _) = a.split(Side::A);
        let (_, mut rx) = b.split(Side::B);
        tx.write(&[1; 100]).unwrap();
        let mut buf = BytesMut::new();
        assert_eq!(rx.read_into(&mut buf, 40).unwrap().n, 40);
        spy.map
            .tail(0)
            .store(40 + MIN_CAPACITY as u64 + 1, Ordering::Release);
        let e = rx.available().unwrap_err();
        let ShmError::Corrupt(msg) = e else {
            panic!("{e:?}")
        };
        assert!(
            msg.contains("tail 4137") && msg.contains("capacity 4096") && msg.contains("head 40"),
            "{msg}"
        );
        // Even with the tail put back, the consumer stays failed.
        spy.map.tail(0).store(100, Ordering::Release);
        assert!(matches!(rx.read_into(&mut buf, 10), Err(ShmError::Corrupt(m)) if m == msg));
        assert!(matches!(rx.prepare_sleep(), Err(ShmError::Corrupt(_))));
        assert!(matches!(rx.available(), Err(ShmError::Corrupt(_))));
        assert_eq!(buf.len(), 40);
        // The flag was not left set.
        assert_eq!(spy.map.consumer_sleeping(0).load(Ordering::Relaxed), 0);
        // The largest tail does not overflow anything either.
        let ((mut tx, _), (_, mut rx)) = pair(MIN_CAPACITY);
        tx.write(b"x").unwrap();
        rx.map.tail(0).store(u64::MAX, Ordering::Release);
        assert!(matches!(
            rx.read_into(&mut buf, usize::MAX),
            Err(ShmError::Corrupt(_))
        ));
    }

    #[test]
    fn corrupt_tail_backwards() {
        let a = Region::create(MIN_CAPACITY).unwrap();
        let spy = reopen(&a);
        let b = reopen(&a);
        let (mut tx, _) = a.split(Side::A);
        let (_, mut rx) = b.split(Side::B);
        tx.write(&[1; 100]).unwrap();
        // The consumer saw 100 bytes, read none: a tail of 50 is still ahead of its head,
        // but went backwards.
        assert_eq!(rx.available().unwrap(), 100);
        spy.map.tail(0).store(50, Ordering::Release);
        let e = rx.read_into(&mut BytesMut::new(), 10).unwrap_err();
        let ShmError::Corrupt(msg) = e else {
            panic!("{e:?}")
        };
        assert!(msg.contains("tail went backwards from 100 to 50"), "{msg}");
        // Behind the head: read 100, then the tail says 10.
        let ((mut tx, _), (_, mut rx)) = pair(MIN_CAPACITY);
        tx.write(&[1; 100]).unwrap();
        assert_eq!(rx.read_into(&mut BytesMut::new(), 100).unwrap().n, 100);
        rx.map.tail(0).store(10, Ordering::Release);
        let e = rx.prepare_sleep().unwrap_err();
        assert!(
            e.to_string().contains("tail went backwards from 100 to 10"),
            "{e}"
        );
    }

    #[test]
    fn corrupt_head() {
        // Past the producer's tail.
        let a = Region::create(MIN_CAPACITY).unwrap();
        let spy = reopen(&a);
        let (mut tx, _) = a.split(Side::A);
        tx.write(&[1; 100]).unwrap();
        spy.map.head(0).store(101, Ordering::Release);
        let e = tx.write(b"more").unwrap_err();
        let ShmError::Corrupt(msg) = e else {
            panic!("{e:?}")
        };
        assert!(
            msg.contains("head 101 is past the producer's tail 100"),
            "{msg}"
        );
        spy.map.head(0).store(0, Ordering::Release);
        assert!(matches!(tx.free(), Err(ShmError::Corrupt(m)) if m == msg));
        assert!(matches!(tx.write(b"x"), Err(ShmError::Corrupt(_))));
        assert!(matches!(
            tx.prepare_wait_for_room(),
            Err(ShmError::Corrupt(_))
        ));
        assert_eq!(spy.map.producer_waiting(0).load(Ordering::Relaxed), 0);
        // Backwards.
        let a = Region::create(MIN_CAPACITY).unwrap();
        let spy = reopen(&a);
        let b = reopen(&a);
        let (mut tx, _) = a.split(Side::A);
        let (_, mut rx) = b.split(Side::B);
        tx.write(&[1; 100]).unwrap();
        rx.read_into(&mut BytesMut::new(), 60).unwrap();
        assert_eq!(tx.free().unwrap(), MIN_CAPACITY - 40);
        spy.map.head(0).store(10, Ordering::Release);
        let e = tx.prepare_wait_for_room().unwrap_err();
        assert!(
            e.to_string().contains("head went backwards from 60 to 10"),
            "{e}"
        );
        // The largest head.
        let ((mut tx, _), _) = pair(MIN_CAPACITY);
        tx.map.head(0).store(u64::MAX, Ordering::Release);
        assert!(matches!(
            tx.write_vectored(&[IoSlice::new(b"x")]),
            Err(ShmError::Corrupt(_))
        ));
    }

    /// Garbage in the flags means "set": a spurious wake-up at worst.
    #[test]
    fn garbage_flags() {
        let ((mut tx, mut a_rx), (mut b_tx, mut rx)) = pair(MIN_CAPACITY);
        for garbage in [1, 2, 0xdead_beef, u32::MAX] {
            tx.map
                .consumer_sleeping(0)
                .store(garbage, Ordering::Relaxed);
            let w = tx.write(b"abc").unwrap();
            assert_eq!((w.n, w.wake_peer), (3, true));
            assert_eq!(tx.map.consumer_sleeping(0).load(Ordering::Relaxed), 0);
            tx.map.producer_waiting(0).store(garbage, Ordering::Relaxed);
            let r = rx.read_into(&mut BytesMut::new(), 3).unwrap();
            assert_eq!((r.n, r.wake_peer), (3, true));
            // Flags of the other ring, and the header, are not ours to read.
            b_tx.map
                .u64_at(0)
                .store(u64::from(garbage), Ordering::Relaxed);
            b_tx.map.u32_at(12).store(garbage, Ordering::Relaxed);
            b_tx.map
                .producer_waiting(1)
                .store(garbage, Ordering::Relaxed);
            assert!(!a_rx.prepare_sleep().unwrap());
            a_rx.cancel_sleep();
            assert!(b_tx.prepare_wait_for_room().unwrap());
            assert_eq!(b_tx.write(b"z").unwrap().n, 1);
            assert_eq!(a_rx.read_into(&mut BytesMut::new(), 9).unwrap().n, 1);
        }
    }

    /// A memory file made by hand: `capacity`, `magic` and `version` in the header,
    /// `size` bytes, `seals`.
    fn fake(capacity: u32, size: u64, magic: u64, version: u32, seals: SealFlags) -> OwnedFd {
        let fd = rustix::fs::memfd_create("fake", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
            .unwrap();
        rustix::fs::ftruncate(&fd, size).unwrap();
        let mut header = [0u8; HEADER_SIZE];
        header[0..8].copy_from_slice(&magic.to_ne_bytes());
        header[8..12].copy_from_slice(&version.to_ne_bytes());
        header[12..16].copy_from_slice(&capacity.to_ne_bytes());
        let len = header.len().min(size as usize);
        rustix::io::pwrite(&fd, &header[..len], 0).unwrap();
        if !seals.is_empty() {
            rustix::fs::fcntl_add_seals(&fd, seals).unwrap();
        }
        fd
    }

    #[test]
    fn open_refuses() {
        let sealed = SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL;
        let cap = MIN_CAPACITY as u32;
        let size = region_size(MIN_CAPACITY) as u64;
        // The same by hand, right: accepted (so each refusal is for its own reason).
        let region = Region::open(fake(cap, size, MAGIC, VERSION, sealed)).unwrap();
        assert_eq!(region.capacity(), MIN_CAPACITY);

        let refused = |fd: OwnedFd, what: &str| match Region::open(fd) {
            Err(ShmError::Refused(msg)) => assert!(msg.contains(what), "{msg:?} lacks {what:?}"),
            other => panic!("expected a refusal about {what:?}, got {other:?}"),
        };
        refused(
            fake(cap, size, MAGIC, VERSION, SealFlags::empty()),
            "sealed",
        );
        refused(
            fake(
                cap,
                size,
                MAGIC,
                VERSION,
                SealFlags::SHRINK | SealFlags::GROW,
            ),
            "sealed",
        );
        refused(
            fake(cap, size, MAGIC, VERSION, SealFlags::GROW | SealFlags::SEAL),
            "sealed",
        );
        refused(fake(cap, size + 4096, MAGIC, VERSION, sealed), "bytes");
        refused(fake(cap, size - 1, MAGIC, VERSION, sealed), "bytes");
        refused(fake(cap, 8, MAGIC, VERSION, sealed), "too small");
        refused(fake(cap, size, MAGIC ^ 1, VERSION, sealed), "magic");
        refused(fake(cap, size, 0, VERSION, sealed), "magic");
        refused(fake(cap, size, MAGIC, VERSION + 1, sealed), "version");
        for bad in [5000, 2048, 0, (MAX_CAPACITY * 2) as u32, u32::MAX] {
            refused(
                fake(bad, DATA as u64 + 2 * bad as u64, MAGIC, VERSION, sealed),
                "capacity",
            );
        }
        // Not a memory file at all.
        let (r, _w) = rustix::pipe::pipe().unwrap();
        assert!(matches!(Region::open(r), Err(ShmError::Io(_))));
        // Sealed against writing: cannot be mapped writable.
        let fd = fake(
            cap,
            size,
            MAGIC,
            VERSION,
            SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL,
        );
        assert!(matches!(Region::open(fd), Err(ShmError::Io(_))));
    }

    #[test]
    fn pass_descriptors() {
        let (a, b) = UnixStream::pair().unwrap();
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::NONBLOCK).unwrap();
        // Three copies of the pipe's writing end; the receiver keeps one.
        assert_eq!(
            send_fds(a.as_fd(), b"hi", &[w.as_fd(), w.as_fd(), w.as_fd()]).unwrap(),
            2
        );
        drop(w);
        let mut fds = Vec::new();
        let mut buf = [0u8; 8];
        assert_eq!(recv_fds(b.as_fd(), &mut buf, &mut fds, 1).unwrap(), 2);
        assert_eq!(&buf[..2], b"hi");
        assert_eq!(fds.len(), 1);
        let flags = rustix::io::fcntl_getfd(&fds[0]).unwrap();
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
        rustix::io::write(&fds[0], b"x").unwrap();
        let mut one = [0u8; 1];
        assert_eq!(rustix::io::read(&r, &mut one).unwrap(), 1);
        // With the kept one closed too, the pipe has no writer: the other two were closed.
        drop(fds);
        assert_eq!(rustix::io::read(&r, &mut one).unwrap(), 0);
        // Bytes alone, and no descriptors wanted but some sent.
        assert_eq!(send_fds(a.as_fd(), b"plain", &[]).unwrap(), 5);
        let mut fds = Vec::new();
        assert_eq!(recv_fds(b.as_fd(), &mut buf, &mut fds, 4).unwrap(), 5);
        assert!(fds.is_empty());
        let region = Region::create(MIN_CAPACITY).unwrap();
        send_fds(a.as_fd(), b"r", &[region.fd()]).unwrap();
        assert_eq!(recv_fds(b.as_fd(), &mut buf, &mut fds, 0).unwrap(), 1);
        assert!(fds.is_empty());
        // Descriptors need a byte; end of stream is 0.
        let e = send_fds(a.as_fd(), b"", &[region.fd()]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        drop(a);
        assert_eq!(recv_fds(b.as_fd(), &mut buf, &mut fds, 1).unwrap(), 0);
        // Sending to a closed peer is an error, not SIGPIPE.
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        assert!(send_fds(a.as_fd(), b"r", &[region.fd()]).is_err());
    }

    /// Runs this test executable again as the test `shm_child`, with one end of a socket
    /// pair: returns the child and our end.
    fn spawn_child() -> (Child, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let raw = theirs.as_raw_fd();
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args([
                "--exact",
                "shm::tests::shm_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, raw.to_string())
            .stdout(Stdio::null());
        // Other tests of this process may spawn children at the same time, so the
        // descriptor stays close-on-exec here and is inherited by this child alone.
        // SAFETY: between fork and exec the closure makes one system call (`fcntl`),
        // which is async-signal-safe, and allocates nothing.
        unsafe {
            command.pre_exec(move || {
                let fd = BorrowedFd::borrow_raw(raw);
                rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
                Ok(())
            });
        }
        let child = command.spawn().unwrap();
        drop(theirs);
        (child, ours)
    }

    /// Waits up to 10 s for `child` to exit.
    fn reap(child: &mut Child) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the child did not exit");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The messages the parent sends: a 4-byte length, then that many bytes of the
    /// pattern; a length of 0 ends the stream.
    fn messages(count: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let mut pos = 0u64;
        for i in 0..count {
            let len = (i * 7919) % 9000 + 1;
            out.extend_from_slice(&(len as u32).to_le_bytes());
            out.extend_from_slice(pat(pos, len as usize));
            pos += len;
        }
        out
    }

    /// The child of the `two_processes_*` tests (returns at once in a normal run): opens
    /// the region it receives and echoes every message back, until the one of length 0.
    #[test]
    fn shm_child() {
        let Ok(fd) = std::env::var(CHILD_ENV) else {
            return;
        };
        let fd: i32 = fd.parse().unwrap();
        // SAFETY: the parent left this descriptor open for this process alone, and nothing
        // else in it owns the descriptor.
        let sock = UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let mut fds = Vec::new();
        let mut byte = [0u8; 1];
        assert_eq!(recv_fds(sock.as_fd(), &mut byte, &mut fds, 1).unwrap(), 1);
        let region = Region::open(fds.pop().expect("a descriptor")).unwrap();
        let (mut tx, mut rx) = region.split(Side::B);
        let (mut input, mut output) = (BytesMut::new(), BytesMut::new());
        let mut done = false;
        loop {
            let r = rx.read_into(&mut input, 64 << 10).unwrap();
            if r.wake_peer {
                wake(&sock);
            }
            while input.len() >= 4 && !done {
                let len = u32::from_le_bytes(input[..4].try_into().unwrap()) as usize;
                if input.len() < 4 + len {
                    break;
                }
                output.extend_from_slice(&input.split_to(4 + len));
                done = len == 0;
            }
            let w = tx.write(&output).unwrap();
            if w.wake_peer {
                wake(&sock);
            }
            output.advance(w.n);
            if done && output.is_empty() {
                return;
            }
            if r.n == 0 && w.n == 0 {
                assert!(
                    idle(&mut tx, &mut rx, &sock, !output.is_empty()),
                    "the parent is gone"
                );
            }
        }
    }

    /// A real second process echoes a stream of messages through the two rings.
    #[test]
    fn two_processes_echo() {
        let region = Region::create(16 << 10).unwrap();
        let (mut child, sock) = spawn_child();
        send_fds(sock.as_fd(), b"R", &[region.fd()]).unwrap();
        let (mut tx, mut rx) = region.split(Side::A);
        let mut out = messages(500);
        out.extend_from_slice(&0u32.to_le_bytes());
        let (mut sent, mut echo, mut child_gone) = (0, BytesMut::new(), false);
        while echo.len() < out.len() {
            let w = tx.write(&out[sent..]).unwrap();
            if w.wake_peer {
                wake(&sock);
            }
            sent += w.n;
            let r = rx.read_into(&mut echo, usize::MAX).unwrap();
            if r.wake_peer {
                wake(&sock);
            }
            if w.n == 0 && r.n == 0 {
                // The child exits once it has written its last echo, which may be before
                // this side has read it: its end of the socket closing is the wake-up.
                assert!(!child_gone, "the child is gone before the end of the echo");
                child_gone = !idle(&mut tx, &mut rx, &sock, sent < out.len());
            }
        }
        assert!(echo[..] == out[..], "the echo differs");
        assert!(reap(&mut child).success());
        // The child is gone and has closed its end.
        assert!(child_gone || !wait_and_drain(&sock, "parent"));
    }

    /// The child is killed mid-stream: the socket says so, and the rings still answer.
    #[test]
    fn two_processes_child_killed() {
        let region = Region::create(MIN_CAPACITY).unwrap();
        let (mut child, sock) = spawn_child();
        send_fds(sock.as_fd(), b"R", &[region.fd()]).unwrap();
        let (mut tx, mut rx) = region.split(Side::A);
        let out = messages(10_000);
        let (mut sent, mut echo) = (0, BytesMut::new());
        while echo.len() < 256 << 10 {
            let w = tx.write(&out[sent..]).unwrap();
            if w.wake_peer {
                wake(&sock);
            }
            sent += w.n;
            let r = rx.read_into(&mut echo, usize::MAX).unwrap();
            if r.wake_peer {
                wake(&sock);
            }
            if w.n == 0 && r.n == 0 {
                assert!(idle(&mut tx, &mut rx, &sock, true), "the child is gone");
            }
        }
        assert!(sent < out.len(), "the stream ended before the kill");
        child.kill().unwrap();
        assert!(!reap(&mut child).success());
        // End of stream on the socket (after any wake-ups still in it).
        let deadline = Instant::now() + WAIT;
        while wait_and_drain(&sock, "parent") {
            assert!(Instant::now() < deadline, "no end of stream after the kill");
        }
        // The rings still work on this side: what the child echoed before dying is there,
        // the ring to it takes bytes until full, and nothing blocks or panics.
        while rx.read_into(&mut echo, usize::MAX).unwrap().n > 0 {}
        assert!(echo[..] == out[..echo.len()], "the echo differs");
        while tx.write(&out[sent..]).unwrap().n > 0 {}
        assert_eq!(tx.free().unwrap(), 0);
        assert!(!tx.prepare_wait_for_room().unwrap());
        tx.cancel_wait();
        assert!(!rx.prepare_sleep().unwrap());
        rx.cancel_sleep();
        assert_eq!(rx.available().unwrap(), 0);
        wake(&sock);
        assert!(send_fds(sock.as_fd(), b"x", &[]).is_err());
    }

    /// Bytes per second through a ring of `DEFAULT_CAPACITY` between two threads, in
    /// writes of `chunk` bytes, with the wait/wake protocol.
    fn shm_rate(chunk: usize, total: u64) -> f64 {
        let ((mut tx, _), (_, mut rx)) = pair(DEFAULT_CAPACITY);
        let (tx_sock, rx_sock) = UnixStream::pair().unwrap();
        let start = Instant::now();
        let producer = std::thread::spawn(move || {
            let data = vec![7u8; chunk];
            let mut pos = 0;
            while pos < total {
                let w = tx.write(&data).unwrap();
                if w.wake_peer {
                    wake(&tx_sock);
                }
                pos += w.n as u64;
                if w.n == 0 && !tx.prepare_wait_for_room().unwrap() {
                    assert!(wait_and_drain(&tx_sock, "producer"));
                    tx.cancel_wait();
                }
            }
            tx_sock
        });
        let mut buf = BytesMut::with_capacity(DEFAULT_CAPACITY);
        let mut pos = 0;
        while pos < total {
            buf.clear();
            let r = rx.read_into(&mut buf, usize::MAX).unwrap();
            if r.wake_peer {
                wake(&rx_sock);
            }
            pos += r.n as u64;
            if r.n == 0 && !rx.prepare_sleep().unwrap() {
                assert!(wait_and_drain(&rx_sock, "consumer"));
                rx.cancel_sleep();
            }
        }
        let rate = total as f64 / start.elapsed().as_secs_f64();
        producer.join().unwrap();
        rate
    }

    /// The same through a Unix socket pair: one `write` per chunk, reads of up to 1 MiB.
    fn socket_rate(chunk: usize, total: u64) -> f64 {
        use std::io::{Read as _, Write as _};
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let start = Instant::now();
        let producer = std::thread::spawn(move || {
            let data = vec![7u8; chunk];
            let mut pos = 0;
            while pos < total {
                a.write_all(&data).unwrap();
                pos += chunk as u64;
            }
        });
        let mut buf = vec![0u8; DEFAULT_CAPACITY];
        let mut pos = 0;
        while pos < total {
            pos += b.read(&mut buf).unwrap() as u64;
        }
        let rate = total as f64 / start.elapsed().as_secs_f64();
        producer.join().unwrap();
        rate
    }

    /// The ceiling of the rings beside a Unix socket: `cargo test -p yukicomm-link
    /// --release -- --ignored shm_throughput --nocapture`.
    #[test]
    #[ignore]
    fn shm_throughput() {
        for (chunk, total) in [(64, 256u64 << 20), (64 << 10, 4u64 << 30)] {
            let shm = (0..3).map(|_| shm_rate(chunk, total)).fold(0.0, f64::max);
            let socket_total = if chunk == 64 { total / 8 } else { total / 2 };
            let socket = (0..3)
                .map(|_| socket_rate(chunk, socket_total))
                .fold(0.0, f64::max);
            println!(
                "{chunk:>6}-byte writes: ring {:>8.0} MB/s, socket {:>8.0} MB/s ({:.1}x), best of 3",
                shm / 1e6,
                socket / 1e6,
                shm / socket
            );
        }
    }
}
