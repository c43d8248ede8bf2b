//! The kinds of frame and what can be wrong with one: the leaf that the codec and the
//! store's frames both build on.

/// The kind byte of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// [`Frame::Msg`].
    Msg = 1,
    /// [`Frame::Credit`].
    Credit = 2,
    /// [`Frame::Request`].
    Request = 3,
    /// [`Frame::Reply`].
    Reply = 4,
    /// [`Frame::Notice`].
    Notice = 5,
    /// [`Frame::Event`].
    Event = 6,
    /// [`Frame::Op`].
    Op = 7,
    /// [`Frame::OpReply`].
    OpReply = 8,
    /// [`Frame::Delivery`].
    Delivery = 9,
    /// [`Frame::Call`].
    Call = 10,
    /// [`Frame::CallReply`].
    CallReply = 11,
    /// [`Frame::Cancel`].
    Cancel = 12,
}

/// Why bytes on a connection are not a valid frame. Any of these ends the connection.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The length prefix is larger than the configured maximum.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced length.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// The length prefix is zero: a frame has at least its kind byte.
    #[error("empty frame")]
    Empty,
    /// The kind byte is not one this version knows.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// The frame's payload does not match its kind.
    #[error("malformed {kind:?} frame: {reason}")]
    Malformed {
        /// The kind of frame.
        kind: Kind,
        /// What is wrong.
        reason: String,
    },
}

/// A [`FrameError::Malformed`] for a frame of `kind`.
pub(crate) fn malformed(kind: Kind, reason: impl Into<String>) -> FrameError {
    FrameError::Malformed {
        kind,
        reason: reason.into(),
    }
}
