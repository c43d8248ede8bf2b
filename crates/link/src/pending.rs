//! What waits to be written on a connection: bytes appended in place, with shared
//! buffers (large message bodies) spliced in between them without being copied.

use std::io::{self, IoSlice, Write};

use bytes::Bytes;

/// At most this many pieces go into one vectored write.
const MAX_SLICES: usize = 64;

/// A stream of bytes to write: the bytes appended to [`Pending::bytes`], with shared
/// buffers spliced in where [`Pending::splice`] was called.
#[derive(Debug, Default)]
pub struct Pending {
    bytes: Vec<u8>,
    /// Shared buffers, each with the length `bytes` had when it was spliced in: it goes
    /// before `bytes[at..]`. In order of `at`.
    shared: Vec<(usize, Bytes)>,
    /// The total length of the shared buffers.
    shared_len: usize,
}

/// A position in a [`Pending`], to cut it back to with [`Pending::truncate`].
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    bytes: usize,
    shared: usize,
    shared_len: usize,
}

impl Pending {
    /// Nothing to write, with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Pending {
        Pending {
            bytes: Vec::with_capacity(capacity),
            ..Default::default()
        }
    }

    /// The bytes appended in place; what is pushed onto them follows everything so far.
    pub fn bytes(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }

    /// Appends `shared` without copying it.
    pub fn splice(&mut self, shared: Bytes) {
        if shared.is_empty() {
            return;
        }
        self.shared_len += shared.len();
        self.shared.push((self.bytes.len(), shared));
    }

    /// The length of the whole stream.
    pub fn len(&self) -> usize {
        self.bytes.len() + self.shared_len
    }

    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty() && self.shared.is_empty()
    }

    /// Where the stream ends now.
    pub fn mark(&self) -> Mark {
        Mark {
            bytes: self.bytes.len(),
            shared: self.shared.len(),
            shared_len: self.shared_len,
        }
    }

    /// Cuts the stream back to `mark`.
    pub fn truncate(&mut self, mark: Mark) {
        self.bytes.truncate(mark.bytes);
        self.shared.truncate(mark.shared);
        self.shared_len = mark.shared_len;
    }

    /// Empties it, keeping the allocation of its bytes.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.shared.clear();
        self.shared_len = 0;
    }

    /// The capacity of its bytes.
    pub(crate) fn capacity(&self) -> usize {
        self.bytes.capacity()
    }

    /// Calls `f` with each piece of the stream from `from` on, in order, until it
    /// returns `false`.
    fn pieces<'a>(&'a self, from: usize, mut f: impl FnMut(&'a [u8]) -> bool) {
        let mut skip = from;
        let mut emit = |piece: &'a [u8]| -> bool {
            if skip >= piece.len() {
                skip -= piece.len();
                return true;
            }
            let rest = &piece[skip..];
            skip = 0;
            f(rest)
        };
        let mut at = 0;
        for (next, shared) in &self.shared {
            if !emit(&self.bytes[at..*next]) || !emit(shared) {
                return;
            }
            at = *next;
        }
        emit(&self.bytes[at..]);
    }

    /// One vectored write of what follows `from` (at most [`MAX_SLICES`] pieces).
    ///
    /// # Errors
    ///
    /// The error of `write_vectored`.
    pub fn write_from(&self, from: usize, w: &mut impl Write) -> io::Result<usize> {
        if self.shared.is_empty() {
            return w.write(&self.bytes[from..]);
        }
        let mut slices: [IoSlice<'_>; MAX_SLICES] = [IoSlice::new(&[]); MAX_SLICES];
        let mut n = 0;
        self.pieces(from, |piece| {
            if !piece.is_empty() {
                slices[n] = IoSlice::new(piece);
                n += 1;
            }
            n < MAX_SLICES
        });
        w.write_vectored(&slices[..n])
    }

    /// Writes all of it, blocking.
    ///
    /// # Errors
    ///
    /// The first error of a write, other than an interruption.
    pub fn write_all(&self, w: &mut impl Write) -> io::Result<()> {
        let mut written = 0;
        while written < self.len() {
            match self.write_from(written, w) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Drops the first `n` bytes of the stream (copying the in-place bytes that stay).
    pub(crate) fn advance(&mut self, n: usize) {
        if self.shared.is_empty() {
            self.bytes.drain(..n);
            return;
        }
        let mut rest = Pending::with_capacity(self.bytes.len());
        let mut skip = n;
        let mut at = 0;
        let mut take = |piece: &[u8], shared: Option<&Bytes>, rest: &mut Pending| {
            if skip >= piece.len() {
                skip -= piece.len();
                return;
            }
            match shared {
                Some(b) => rest.splice(b.slice(skip..)),
                None => rest.bytes.extend_from_slice(&piece[skip..]),
            }
            skip = 0;
        };
        for (next, shared) in &self.shared {
            take(&self.bytes[at..*next], None, &mut rest);
            take(shared, Some(shared), &mut rest);
            at = *next;
        }
        take(&self.bytes[at..], None, &mut rest);
        *self = rest;
    }

    /// Appends `other` after this stream.
    pub(crate) fn append(&mut self, other: &Pending) {
        let base = self.bytes.len();
        self.bytes.extend_from_slice(&other.bytes);
        for (at, shared) in &other.shared {
            self.shared.push((base + at, shared.clone()));
        }
        self.shared_len += other.shared_len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(p: &Pending) -> Vec<u8> {
        let mut out = Vec::new();
        p.write_all(&mut out).unwrap();
        out
    }

    fn sample() -> Pending {
        let mut p = Pending::default();
        p.bytes().extend_from_slice(b"ab");
        p.splice(Bytes::from_static(b"CDE"));
        p.bytes().extend_from_slice(b"f");
        p.splice(Bytes::from_static(b"GH"));
        p.splice(Bytes::from_static(b"IJ"));
        p.bytes().extend_from_slice(b"k");
        p
    }

    #[test]
    fn shared_buffers_are_written_in_their_place() {
        let p = sample();
        assert_eq!(p.len(), 11);
        assert_eq!(collect(&p), b"abCDEfGHIJk");
    }

    #[test]
    fn advancing_keeps_the_rest_in_order_at_every_cut() {
        for n in 0..=11 {
            let mut p = sample();
            p.advance(n);
            assert_eq!(collect(&p), &b"abCDEfGHIJk"[n..], "cut at {n}");
            let mut q = Pending::default();
            q.bytes().extend_from_slice(b"xy");
            p.append(&q);
            assert_eq!(collect(&p).len(), 11 - n + 2);
        }
    }

    #[test]
    fn truncating_to_a_mark_forgets_what_followed() {
        let mut p = sample();
        let mark = p.mark();
        p.bytes().extend_from_slice(b"zz");
        p.splice(Bytes::from_static(b"ZZ"));
        p.truncate(mark);
        assert_eq!(collect(&p), b"abCDEfGHIJk");
    }

    #[test]
    fn a_partial_vectored_write_resumes_where_it_stopped() {
        /// Takes at most three bytes per write.
        struct Slow(Vec<u8>);
        impl Write for Slow {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                let n = buf.len().min(3);
                self.0.extend_from_slice(&buf[..n]);
                Ok(n)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut w = Slow(Vec::new());
        sample().write_all(&mut w).unwrap();
        assert_eq!(w.0, b"abCDEfGHIJk");
    }
}
