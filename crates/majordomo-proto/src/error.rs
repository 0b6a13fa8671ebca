//! Typed errors: every malformed message says what was wrong with it, every command a version
//! cannot carry says so.

use bytes::Bytes;

use crate::mdp2::Version;

/// Why a multipart message could not be decoded.
///
/// Decoding never panics: every malformed input from the network ends up here, so the caller can log
/// it against the peer and drop it (or DISCONNECT the peer, when the protocol asks for that).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The message had no frames at all.
    #[error("empty message")]
    Empty,
    /// A message read from a ROUTER socket had no identity frame in front of the payload.
    #[error("missing ROUTER identity frame")]
    MissingIdentity,
    /// Frame 0 must be empty (7/MDP: "Frame 0: Empty") but had bytes in it.
    #[error("frame 0 must be empty, it has {0} bytes")]
    MissingEmptyFrame(usize),
    /// The protocol header frame is neither `MDPC01` nor `MDPW01`.
    #[error("unknown protocol header {0:?}")]
    UnknownHeader(Bytes),
    /// A valid header, but of the other sub-protocol than the one expected here
    /// (for example a worker command arriving on a client-only endpoint).
    #[error("expected header {expected}, got {got:?}")]
    UnexpectedHeader {
        /// The header this endpoint accepts.
        expected: &'static str,
        /// What arrived.
        got: Bytes,
    },
    /// The command frame of an MDP/Worker message is missing.
    #[error("missing command frame")]
    MissingCommand,
    /// The command frame is not one byte long.
    #[error("command frame must be one byte, it has {0}")]
    BadCommandFrame(usize),
    /// The command byte is not one this sub-protocol defines (or not valid in this direction).
    #[error("unknown command byte 0x{0:02x}")]
    UnknownCommand(u8),
    /// The command is known but the message has the wrong number of frames for it.
    #[error("{command} needs {expected} frames, got {got}")]
    WrongFrameCount {
        /// The command that was recognised.
        command: &'static str,
        /// What the RFC requires, in words ("3", "4 or more").
        expected: &'static str,
        /// How many frames arrived (without the ROUTER identity).
        got: usize,
    },
    /// REQUEST or REPLY without a client address frame, or with an empty one.
    #[error("missing or empty client address frame")]
    MissingClientAddress,
    /// The frame after the client address must be empty (7/MDP: "This frame MUST be followed by
    /// an empty (zero sized) frame").
    #[error("client address must be followed by an empty delimiter frame")]
    MissingDelimiter,
    /// The service name frame is empty.
    #[error("empty service name")]
    EmptyServiceName,
    /// The service name is longer than the configured limit.
    #[error("service name of {len} bytes exceeds the limit of {max}")]
    ServiceNameTooLong {
        /// Length of the name that arrived.
        len: usize,
        /// The configured limit ([`crate::Limits::max_service_name`]).
        max: usize,
    },
    /// The whole message is larger than the configured limit.
    #[error("message of {size} bytes exceeds the limit of {max}")]
    MessageTooLarge {
        /// Sum of the frame lengths.
        size: usize,
        /// The configured limit ([`crate::Limits::max_message_size`]).
        max: usize,
    },
    /// The message has more frames than the configured limit.
    #[error("message of {count} frames exceeds the limit of {max}")]
    TooManyFrames {
        /// How many frames arrived.
        count: usize,
        /// The configured limit ([`crate::Limits::max_frames`]).
        max: usize,
    },
    /// A 6/PPP message that carries neither a command nor any body frame.
    #[error("message has no body frame")]
    MissingBody,
    /// A registered worker sent a command in another MDP version or dialect than the one it
    /// registered in (a worker speaks one for its whole session).
    #[error("worker registered in {registered:?} sent a command in {got:?}")]
    VersionSwitch {
        /// The version and dialect of its READY.
        registered: Version,
        /// The version and dialect of this command.
        got: Version,
    },
}

impl DecodeError {
    /// Every [`DecodeError::kind`], so that a counter per kind can be exported from zero.
    pub const KINDS: [&'static str; 17] = [
        "empty",
        "missing_identity",
        "missing_empty_frame",
        "unknown_header",
        "unexpected_header",
        "missing_command",
        "bad_command_frame",
        "unknown_command",
        "wrong_frame_count",
        "missing_client_address",
        "missing_delimiter",
        "empty_service_name",
        "service_name_too_long",
        "message_too_large",
        "too_many_frames",
        "missing_body",
        "version_switch",
    ];

    /// A short, stable name for the kind of error, for counters (`kind` label of
    /// `majordomo_protocol_errors_total`); one of [`DecodeError::KINDS`].
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::MissingIdentity => "missing_identity",
            Self::MissingEmptyFrame(_) => "missing_empty_frame",
            Self::UnknownHeader(_) => "unknown_header",
            Self::UnexpectedHeader { .. } => "unexpected_header",
            Self::MissingCommand => "missing_command",
            Self::BadCommandFrame(_) => "bad_command_frame",
            Self::UnknownCommand(_) => "unknown_command",
            Self::WrongFrameCount { .. } => "wrong_frame_count",
            Self::MissingClientAddress => "missing_client_address",
            Self::MissingDelimiter => "missing_delimiter",
            Self::EmptyServiceName => "empty_service_name",
            Self::ServiceNameTooLong { .. } => "service_name_too_long",
            Self::MessageTooLarge { .. } => "message_too_large",
            Self::TooManyFrames { .. } => "too_many_frames",
            Self::MissingBody => "missing_body",
            Self::VersionSwitch { .. } => "version_switch",
        }
    }
}

/// Why a command could not be encoded in the version asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A PARTIAL in 7/MDP v0.1, which has one reply per request: send the parts with the FINAL.
    #[error("7/MDP v0.1 has no PARTIAL: send the parts with the FINAL")]
    PartialInV01,
}

/// A configuration a driver refused to start with; the message names the setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub &'static str);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_listed_once() {
        let v = Version::V01;
        let every = [
            DecodeError::Empty,
            DecodeError::MissingIdentity,
            DecodeError::MissingEmptyFrame(0),
            DecodeError::UnknownHeader(Bytes::new()),
            DecodeError::UnexpectedHeader {
                expected: "",
                got: Bytes::new(),
            },
            DecodeError::MissingCommand,
            DecodeError::BadCommandFrame(0),
            DecodeError::UnknownCommand(0),
            DecodeError::WrongFrameCount {
                command: "",
                expected: "",
                got: 0,
            },
            DecodeError::MissingClientAddress,
            DecodeError::MissingDelimiter,
            DecodeError::EmptyServiceName,
            DecodeError::ServiceNameTooLong { len: 0, max: 0 },
            DecodeError::MessageTooLarge { size: 0, max: 0 },
            DecodeError::TooManyFrames { count: 0, max: 0 },
            DecodeError::MissingBody,
            DecodeError::VersionSwitch {
                registered: v,
                got: v,
            },
        ];
        let kinds: Vec<&str> = every.iter().map(DecodeError::kind).collect();
        assert_eq!(kinds, DecodeError::KINDS);
    }
}
