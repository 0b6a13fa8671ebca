//! 18/MDP (MDP v0.2) messages in both dialects on the wire: typed commands, decoded from and
//! encoded to frames, and the reading of which version and dialect a peer speaks.
//!
//! 18/MDP replaces REPLY with zero or more PARTIAL then one FINAL, and drops the empty frame at
//! the start of every command ("removal of empty frames at start of commands"). majortomo, the
//! maintained Python implementation, reads it differently: it keeps the leading empty frame in
//! both directions, numbers the client's commands as the worker's (REQUEST 0x02, PARTIAL 0x03,
//! FINAL 0x04), and sends replies to clients without the service frame. [`Dialect`] names the
//! two; every type here decodes and encodes either.
//!
//! ```text
//!                 RFC 18                                   majortomo
//! client REQUEST  [MDPC02, 0x01, service, body...]         [empty, MDPC02, 0x02, service, body...]
//! to client       [MDPC02, 0x02|0x03, service, body...]    [empty, MDPC02, 0x03|0x04, body...]
//! worker          [MDPW02, cmd, ...]                       [empty, MDPW02, cmd, ...]
//! ```
//!
//! Worker commands are numbered alike in both: READY 0x01, REQUEST 0x02, PARTIAL 0x03, FINAL
//! 0x04, HEARTBEAT 0x05, DISCONNECT 0x06; REQUEST, PARTIAL and FINAL carry `client, empty,
//! body...`. Frames are shown as a DEALER sees them; a ROUTER adds the identity in front. The frames
//! of every version are written by [`crate::codec`]; these types are its v0.2 view.

use bytes::Bytes;

use crate::{codec, DecodeError, Limits};

/// The client header of 18/MDP: "MDPC02" (MDP/Client v0.2).
pub const CLIENT_HEADER: &[u8] = b"MDPC02";
/// The worker header of 18/MDP: "MDPW02" (MDP/Worker v0.2).
pub const WORKER_HEADER: &[u8] = b"MDPW02";

/// MDP/Client v0.2 command bytes as RFC 18 numbers them.
pub mod client_command {
    /// REQUEST: client to broker.
    pub const REQUEST: u8 = 0x01;
    /// PARTIAL: broker to client, zero or more before FINAL.
    pub const PARTIAL: u8 = 0x02;
    /// FINAL: broker to client, the last reply to a request.
    pub const FINAL: u8 = 0x03;
}

/// MDP/Worker v0.2 command bytes (both dialects; majortomo's client uses them too).
pub mod worker_command {
    /// READY: worker to broker.
    pub const READY: u8 = 0x01;
    /// REQUEST: broker to worker.
    pub const REQUEST: u8 = 0x02;
    /// PARTIAL: worker to broker.
    pub const PARTIAL: u8 = 0x03;
    /// FINAL: worker to broker.
    pub const FINAL: u8 = 0x04;
    /// HEARTBEAT: both directions.
    pub const HEARTBEAT: u8 = 0x05;
    /// DISCONNECT: both directions.
    pub const DISCONNECT: u8 = 0x06;
}

/// How a v0.2 peer frames its commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// As 18/MDP is written: no leading empty frame, the client's own command numbers, the
    /// service frame in every reply.
    Rfc18,
    /// As majortomo 0.2 speaks it: a leading empty frame, the worker's command numbers for
    /// clients too, no service frame in replies to clients.
    Majortomo,
}

/// The MDP version and dialect a message to a broker is in, read from its first frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// 7/MDP v0.1: `[empty, MDPC01|MDPW01, ...]`.
    V01,
    /// 18/MDP v0.2 in a dialect.
    V02(Dialect),
}

/// Who sent a message to a broker, by its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sender {
    /// An MDP/Client header.
    Client,
    /// An MDP/Worker header.
    Worker,
}

/// Reads which version, dialect and sub-protocol a message to a broker (identity split off) is
/// in: `None` when its header is none of the four.
pub fn classify(frames: &[Bytes]) -> Option<(Version, Sender)> {
    let header = |frame: &Bytes| match frame.as_ref() {
        crate::mdp::CLIENT_HEADER => Some((Version::V01, Sender::Client)),
        crate::mdp::WORKER_HEADER => Some((Version::V01, Sender::Worker)),
        CLIENT_HEADER => Some((Version::V02(Dialect::Majortomo), Sender::Client)),
        WORKER_HEADER => Some((Version::V02(Dialect::Majortomo), Sender::Worker)),
        _ => None,
    };
    match frames {
        [first, second, ..] if first.is_empty() => header(second),
        [first, ..] => match first.as_ref() {
            CLIENT_HEADER => Some((Version::V02(Dialect::Rfc18), Sender::Client)),
            WORKER_HEADER => Some((Version::V02(Dialect::Rfc18), Sender::Worker)),
            _ => None,
        },
        [] => None,
    }
}

const EMPTY: Bytes = Bytes::new();
pub(crate) const CLIENT_HEADER_FRAME: Bytes = Bytes::from_static(CLIENT_HEADER);
pub(crate) const WORKER_HEADER_FRAME: Bytes = Bytes::from_static(WORKER_HEADER);

fn command_frame(byte: u8) -> Bytes {
    const FRAMES: [&[u8]; 6] = [&[1], &[2], &[3], &[4], &[5], &[6]];
    Bytes::from_static(FRAMES[usize::from(byte - 1)])
}

/// Checks the dialect's start (`[empty,]` header) and returns what follows the header.
fn after_header<'a>(
    frames: &'a [Bytes],
    dialect: Dialect,
    header: &'static [u8],
    name: &'static str,
) -> Result<&'a [Bytes], DecodeError> {
    let frames = match dialect {
        Dialect::Rfc18 => frames,
        Dialect::Majortomo => match frames {
            [] => return Err(DecodeError::Empty),
            [first, ..] if !first.is_empty() => {
                return Err(DecodeError::MissingEmptyFrame(first.len()))
            }
            [_, rest @ ..] => rest,
        },
    };
    match frames {
        [] => Err(DecodeError::UnknownHeader(Bytes::new())),
        [got, rest @ ..] if got.as_ref() == header => Ok(rest),
        [got, ..] if got.as_ref() == CLIENT_HEADER || got.as_ref() == WORKER_HEADER => {
            Err(DecodeError::UnexpectedHeader {
                expected: name,
                got: got.clone(),
            })
        }
        [got, ..] => Err(DecodeError::UnknownHeader(got.clone())),
    }
}

/// Reads the one-byte command frame.
fn split_command(rest: &[Bytes]) -> Result<(u8, &[Bytes]), DecodeError> {
    match rest {
        [] => Err(DecodeError::MissingCommand),
        [cmd, ..] if cmd.len() != 1 => Err(DecodeError::BadCommandFrame(cmd.len())),
        [cmd, args @ ..] => Ok((cmd[0], args)),
    }
}

/// `[empty,]` header command, in front of `prefix` (a ROUTER identity) if given.
pub(crate) fn start(
    prefix: Option<&Bytes>,
    dialect: Dialect,
    header: Bytes,
    command: u8,
) -> Vec<Bytes> {
    let mut frames = Vec::with_capacity(8);
    frames.extend(prefix.cloned());
    if dialect == Dialect::Majortomo {
        frames.push(EMPTY);
    }
    frames.push(header);
    frames.push(command_frame(command));
    frames
}

/// Appends `body`, or one empty frame for an empty body (every body has at least one frame).
pub(crate) fn push_body(frames: &mut Vec<Bytes>, body: &[Bytes]) {
    if body.is_empty() {
        frames.push(EMPTY);
    } else {
        frames.extend(body.iter().cloned());
    }
}

/// MDP/Client v0.2 REQUEST, client to broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRequest {
    /// Service name.
    pub service: Bytes,
    /// Request body, one or more frames.
    pub body: Vec<Bytes>,
}

impl ClientRequest {
    /// Decodes a request in `dialect` (identity split off).
    pub fn decode(
        frames: &[Bytes],
        dialect: Dialect,
        limits: &Limits,
    ) -> Result<Self, DecodeError> {
        limits.check(frames)?;
        let rest = after_header(frames, dialect, CLIENT_HEADER, "MDPC02")?;
        let (cmd, args) = split_command(rest)?;
        let request = match dialect {
            Dialect::Rfc18 => client_command::REQUEST,
            Dialect::Majortomo => worker_command::REQUEST,
        };
        if cmd != request {
            return Err(DecodeError::UnknownCommand(cmd));
        }
        match args {
            // "Frames 3+: Request body": at least one (majortomo's broker insists too).
            [service, body @ ..] if !body.is_empty() => {
                limits.check_service(service)?;
                Ok(Self {
                    service: service.clone(),
                    body: body.to_vec(),
                })
            }
            _ => Err(DecodeError::WrongFrameCount {
                command: "REQUEST",
                expected: match dialect {
                    Dialect::Rfc18 => "4 or more",
                    Dialect::Majortomo => "5 or more",
                },
                got: frames.len(),
            }),
        }
    }

    /// Encodes for a DEALER socket in `dialect`.
    pub fn encode(&self, dialect: Dialect) -> Vec<Bytes> {
        codec::request_to_broker_frames(Version::V02(dialect), &self.service, &self.body)
    }
}

/// Whether a reply part is the last one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    /// PARTIAL: more follow.
    Partial,
    /// FINAL: the last; nothing more comes for this request.
    Final,
}

/// MDP/Client v0.2 PARTIAL or FINAL, broker to client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientReply {
    /// PARTIAL or FINAL.
    pub part: Part,
    /// The service that answered. majortomo's replies carry none: decoded, it is empty.
    pub service: Bytes,
    /// Reply body, one or more frames.
    pub body: Vec<Bytes>,
}

impl ClientReply {
    fn command(part: Part, dialect: Dialect) -> u8 {
        match (dialect, part) {
            (Dialect::Rfc18, Part::Partial) => client_command::PARTIAL,
            (Dialect::Rfc18, Part::Final) => client_command::FINAL,
            (Dialect::Majortomo, Part::Partial) => worker_command::PARTIAL,
            (Dialect::Majortomo, Part::Final) => worker_command::FINAL,
        }
    }

    /// Decodes a reply as a DEALER client receives it in `dialect`.
    pub fn decode(
        frames: &[Bytes],
        dialect: Dialect,
        limits: &Limits,
    ) -> Result<Self, DecodeError> {
        limits.check(frames)?;
        let rest = after_header(frames, dialect, CLIENT_HEADER, "MDPC02")?;
        let (cmd, args) = split_command(rest)?;
        let part = if cmd == Self::command(Part::Partial, dialect) {
            Part::Partial
        } else if cmd == Self::command(Part::Final, dialect) {
            Part::Final
        } else {
            return Err(DecodeError::UnknownCommand(cmd));
        };
        let (service, body) = match (dialect, args) {
            (Dialect::Rfc18, [service, body @ ..]) if !body.is_empty() => {
                (service.clone(), body.to_vec())
            }
            (Dialect::Majortomo, body) if !body.is_empty() => (Bytes::new(), body.to_vec()),
            _ => {
                return Err(DecodeError::WrongFrameCount {
                    command: if part == Part::Final {
                        "FINAL"
                    } else {
                        "PARTIAL"
                    },
                    expected: "4 or more",
                    got: frames.len(),
                })
            }
        };
        Ok(Self {
            part,
            service,
            body,
        })
    }

    /// Encodes for a DEALER socket in `dialect` (majortomo's replies drop the service frame).
    pub fn encode(&self, dialect: Dialect) -> Vec<Bytes> {
        self.encode_with(None, dialect)
    }

    /// Encodes for a ROUTER socket, with the client's identity in front.
    pub fn encode_routed(&self, identity: &Bytes, dialect: Dialect) -> Vec<Bytes> {
        self.encode_with(Some(identity), dialect)
    }

    fn encode_with(&self, prefix: Option<&Bytes>, dialect: Dialect) -> Vec<Bytes> {
        codec::v02_reply_frames(prefix, dialect, self.part, &self.service, &self.body)
    }
}

/// An MDP/Worker v0.2 command from a worker to the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerMessage {
    /// READY: `[MDPW02, 0x01, service]`.
    Ready {
        /// The one service this worker handles.
        service: Bytes,
    },
    /// PARTIAL or FINAL: `[MDPW02, 0x03|0x04, client, empty, body...]`.
    Reply {
        /// PARTIAL or FINAL.
        part: Part,
        /// The client's address, as the REQUEST gave it.
        client: Bytes,
        /// Reply body, one or more frames.
        body: Vec<Bytes>,
    },
    /// HEARTBEAT: `[MDPW02, 0x05]`.
    Heartbeat,
    /// DISCONNECT: `[MDPW02, 0x06]`.
    Disconnect,
}

/// An MDP/Worker v0.2 command from the broker to a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerMessage {
    /// REQUEST: `[MDPW02, 0x02, client, empty, body...]`.
    Request {
        /// The client's address; the worker returns it in PARTIAL and FINAL.
        client: Bytes,
        /// Request body, one or more frames.
        body: Vec<Bytes>,
    },
    /// HEARTBEAT: `[MDPW02, 0x05]`.
    Heartbeat,
    /// DISCONNECT: `[MDPW02, 0x06]`.
    Disconnect,
}

/// Reads `[client, empty, body...]`.
fn envelope(
    command: &'static str,
    args: &[Bytes],
    total: usize,
) -> Result<(Bytes, Vec<Bytes>), DecodeError> {
    match args {
        [] => Err(DecodeError::MissingClientAddress),
        [client, ..] if client.is_empty() => Err(DecodeError::MissingClientAddress),
        [_, delimiter, ..] if !delimiter.is_empty() => Err(DecodeError::MissingDelimiter),
        [client, _, body @ ..] if !body.is_empty() => Ok((client.clone(), body.to_vec())),
        _ => Err(DecodeError::WrongFrameCount {
            command,
            expected: "5 or more",
            got: total,
        }),
    }
}

fn none(command: &'static str, args: &[Bytes], total: usize) -> Result<(), DecodeError> {
    if args.is_empty() {
        Ok(())
    } else {
        Err(DecodeError::WrongFrameCount {
            command,
            expected: "2",
            got: total,
        })
    }
}

/// Checks `limits` and the worker header, and returns the command byte, what follows it, and
/// the message's frame count (for errors).
fn worker_command<'a>(
    frames: &'a [Bytes],
    dialect: Dialect,
    limits: &Limits,
) -> Result<(u8, &'a [Bytes], usize), DecodeError> {
    limits.check(frames)?;
    let rest = after_header(frames, dialect, WORKER_HEADER, "MDPW02")?;
    let (cmd, args) = split_command(rest)?;
    Ok((cmd, args, frames.len()))
}

impl WorkerMessage {
    /// Decodes a worker command in `dialect` as the broker receives it (identity split off).
    pub fn decode(
        frames: &[Bytes],
        dialect: Dialect,
        limits: &Limits,
    ) -> Result<Self, DecodeError> {
        use worker_command::*;
        let (cmd, args, total) = worker_command(frames, dialect, limits)?;
        match cmd {
            READY => match args {
                [service] => {
                    limits.check_service(service)?;
                    Ok(Self::Ready {
                        service: service.clone(),
                    })
                }
                _ => Err(DecodeError::WrongFrameCount {
                    command: "READY",
                    expected: "3",
                    got: total,
                }),
            },
            PARTIAL | FINAL => {
                let part = if cmd == FINAL {
                    Part::Final
                } else {
                    Part::Partial
                };
                let name = if cmd == FINAL { "FINAL" } else { "PARTIAL" };
                let (client, body) = envelope(name, args, total)?;
                Ok(Self::Reply { part, client, body })
            }
            HEARTBEAT => none("HEARTBEAT", args, total).map(|()| Self::Heartbeat),
            DISCONNECT => none("DISCONNECT", args, total).map(|()| Self::Disconnect),
            other => Err(DecodeError::UnknownCommand(other)),
        }
    }

    /// Encodes for a DEALER socket in `dialect`.
    pub fn encode(&self, dialect: Dialect) -> Vec<Bytes> {
        let version = Version::V02(dialect);
        match self {
            Self::Ready { service } => codec::ready_frames(version, service),
            Self::Reply {
                part: Part::Partial,
                client,
                body,
            } => codec::worker_partial_frames(dialect, client, body),
            Self::Reply {
                part: Part::Final,
                client,
                body,
            } => codec::worker_final_frames(version, client, body),
            Self::Heartbeat => codec::heartbeat_frames(None, version),
            Self::Disconnect => codec::disconnect_frames(None, version),
        }
    }
}

impl BrokerMessage {
    /// Decodes a broker command in `dialect` as a DEALER worker receives it.
    pub fn decode(
        frames: &[Bytes],
        dialect: Dialect,
        limits: &Limits,
    ) -> Result<Self, DecodeError> {
        use worker_command::*;
        let (cmd, args, total) = worker_command(frames, dialect, limits)?;
        match cmd {
            REQUEST => {
                let (client, body) = envelope("REQUEST", args, total)?;
                Ok(Self::Request { client, body })
            }
            HEARTBEAT => none("HEARTBEAT", args, total).map(|()| Self::Heartbeat),
            DISCONNECT => none("DISCONNECT", args, total).map(|()| Self::Disconnect),
            other => Err(DecodeError::UnknownCommand(other)),
        }
    }

    /// Encodes for a DEALER socket in `dialect`.
    pub fn encode(&self, dialect: Dialect) -> Vec<Bytes> {
        self.encode_with(None, dialect)
    }

    /// Encodes for a ROUTER socket, with the worker's identity in front.
    pub fn encode_routed(&self, identity: &Bytes, dialect: Dialect) -> Vec<Bytes> {
        self.encode_with(Some(identity), dialect)
    }

    fn encode_with(&self, prefix: Option<&Bytes>, dialect: Dialect) -> Vec<Bytes> {
        let version = Version::V02(dialect);
        match self {
            Self::Request { client, body } => codec::request_frames(prefix, version, client, body),
            Self::Heartbeat => codec::heartbeat_frames(prefix, version),
            Self::Disconnect => codec::disconnect_frames(prefix, version),
        }
    }
}
