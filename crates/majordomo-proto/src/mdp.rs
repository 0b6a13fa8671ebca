//! 7/MDP v0.1 messages: typed commands, decoded from and encoded to frames.
//!
//! Frames are shown here as a DEALER socket sees them, starting with the empty frame 0. A ROUTER
//! socket adds the peer identity in front; [`split_identity`] takes it off, and
//! [`BrokerInbound::decode`] reads what follows. Bodies are `Bytes`: decoding and encoding clone
//! reference-counted handles, never the body bytes. The frames of every version are written by
//! [`crate::codec`]; these types are its v0.1 view.

use bytes::Bytes;

use crate::mdp2::Version;
use crate::{codec, DecodeError, Limits};

/// Frame 1 of every MDP/Client message: "MDPC01" (six bytes, representing MDP/Client v0.1).
pub const CLIENT_HEADER: &[u8] = b"MDPC01";
/// Frame 1 of every MDP/Worker message: "MDPW01" (six bytes, representing MDP/Worker v0.1).
pub const WORKER_HEADER: &[u8] = b"MDPW01";

/// MDP/Worker command bytes (frame 2 of a worker message).
pub mod command {
    /// READY: worker to broker, registers a service.
    pub const READY: u8 = 0x01;
    /// REQUEST: broker to worker.
    pub const REQUEST: u8 = 0x02;
    /// REPLY: worker to broker.
    pub const REPLY: u8 = 0x03;
    /// HEARTBEAT: both directions.
    pub const HEARTBEAT: u8 = 0x04;
    /// DISCONNECT: both directions.
    pub const DISCONNECT: u8 = 0x05;
}

const EMPTY: Bytes = Bytes::new();
const CLIENT_HEADER_FRAME: Bytes = Bytes::from_static(CLIENT_HEADER);
const WORKER_HEADER_FRAME: Bytes = Bytes::from_static(WORKER_HEADER);

fn command_frame(byte: u8) -> Bytes {
    const FRAMES: [&[u8]; 5] = [&[1], &[2], &[3], &[4], &[5]];
    Bytes::from_static(FRAMES[usize::from(byte - 1)])
}

/// Splits the identity frame a ROUTER socket puts in front of every message it receives.
pub fn split_identity(frames: &[Bytes]) -> Result<(&Bytes, &[Bytes]), DecodeError> {
    match frames {
        [] => Err(DecodeError::Empty),
        [_] => Err(DecodeError::MissingIdentity),
        [identity, rest @ ..] => Ok((identity, rest)),
    }
}

/// Checks frame 0 is empty and returns the header frame and what follows it.
fn split_header(frames: &[Bytes]) -> Result<(&Bytes, &[Bytes]), DecodeError> {
    match frames {
        [] => Err(DecodeError::Empty),
        [first, ..] if !first.is_empty() => Err(DecodeError::MissingEmptyFrame(first.len())),
        [_] => Err(DecodeError::UnknownHeader(Bytes::new())),
        [_, header, rest @ ..] => Ok((header, rest)),
    }
}

fn expect_header<'a>(
    frames: &'a [Bytes],
    header: &'static [u8],
    name: &'static str,
) -> Result<&'a [Bytes], DecodeError> {
    let (got, rest) = split_header(frames)?;
    if got.as_ref() == header {
        Ok(rest)
    } else if got.as_ref() == CLIENT_HEADER || got.as_ref() == WORKER_HEADER {
        Err(DecodeError::UnexpectedHeader {
            expected: name,
            got: got.clone(),
        })
    } else {
        Err(DecodeError::UnknownHeader(got.clone()))
    }
}

/// MDP/Client REQUEST: client to broker.
///
/// Wire: `[empty, "MDPC01", service, body...]`, 4 or more frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRequest {
    /// Service name, matched against the name workers gave in READY.
    pub service: Bytes,
    /// Request body, one or more opaque frames.
    pub body: Vec<Bytes>,
}

/// MDP/Client REPLY: broker to client.
///
/// Wire: `[empty, "MDPC01", service, body...]`, 4 or more frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientReply {
    /// Service that answered (the name the request was sent to).
    pub service: Bytes,
    /// Reply body, one or more opaque frames.
    pub body: Vec<Bytes>,
}

fn decode_client_message(
    frames: &[Bytes],
    limits: &Limits,
    command: &'static str,
) -> Result<(Bytes, Vec<Bytes>), DecodeError> {
    limits.check(frames)?;
    let rest = expect_header(frames, CLIENT_HEADER, "MDPC01")?;
    decode_client_after_header(frames.len(), rest, limits, command)
}

/// Reads `[service, body...]` after the client header; the caller has checked `limits` on the
/// whole message (`total` frames).
fn decode_client_after_header(
    total: usize,
    rest: &[Bytes],
    limits: &Limits,
    command: &'static str,
) -> Result<(Bytes, Vec<Bytes>), DecodeError> {
    match rest {
        [service, body @ ..] if !body.is_empty() => {
            limits.check_service(service)?;
            Ok((service.clone(), body.to_vec()))
        }
        _ => Err(DecodeError::WrongFrameCount {
            command,
            expected: "4 or more",
            got: total,
        }),
    }
}

/// Encodes `[prefix?, empty, "MDPC01", service, body...]`. An empty `body` is sent as one empty
/// frame, since the RFC requires at least one body frame (and a decoder refuses a message
/// without one).
pub(crate) fn encode_client_message(
    prefix: Option<&Bytes>,
    service: &Bytes,
    body: &[Bytes],
) -> Vec<Bytes> {
    let mut frames = Vec::with_capacity(5 + body.len());
    frames.extend(prefix.cloned());
    frames.push(EMPTY);
    frames.push(CLIENT_HEADER_FRAME);
    frames.push(service.clone());
    if body.is_empty() {
        frames.push(EMPTY);
    } else {
        frames.extend(body.iter().cloned());
    }
    frames
}

impl ClientRequest {
    /// Builds a request for `service` with `body`.
    pub fn new(service: impl Into<Bytes>, body: Vec<Bytes>) -> Self {
        Self {
            service: service.into(),
            body,
        }
    }

    /// Decodes a request as a DEALER would send it (frame 0 empty).
    pub fn decode(frames: &[Bytes], limits: &Limits) -> Result<Self, DecodeError> {
        let (service, body) = decode_client_message(frames, limits, "REQUEST")?;
        Ok(Self { service, body })
    }

    /// Encodes for a DEALER socket: `[empty, "MDPC01", service, body...]`.
    ///
    /// An empty `body` is sent as one empty frame, since the RFC requires at least one body frame.
    pub fn encode(&self) -> Vec<Bytes> {
        codec::request_to_broker_frames(Version::V01, &self.service, &self.body)
    }
}

impl ClientReply {
    /// Decodes a reply as a DEALER client receives it (frame 0 empty).
    pub fn decode(frames: &[Bytes], limits: &Limits) -> Result<Self, DecodeError> {
        let (service, body) = decode_client_message(frames, limits, "REPLY")?;
        Ok(Self { service, body })
    }

    /// Encodes for a DEALER socket: `[empty, "MDPC01", service, body...]`.
    ///
    /// An empty `body` is sent as one empty frame, since the RFC requires at least one body frame.
    pub fn encode(&self) -> Vec<Bytes> {
        codec::final_frames(None, Version::V01, &self.service, &self.body)
    }

    /// Encodes for a ROUTER socket, with the client's identity in front. An empty `body` is sent
    /// as one empty frame, as by [`ClientReply::encode`].
    pub fn encode_routed(&self, identity: &Bytes) -> Vec<Bytes> {
        codec::final_frames(Some(identity), Version::V01, &self.service, &self.body)
    }
}

/// An MDP/Worker command sent by a worker to the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerMessage {
    /// READY: `[empty, "MDPW01", 0x01, service]`, exactly 4 frames.
    Ready {
        /// The one service this worker handles.
        service: Bytes,
    },
    /// REPLY: `[empty, "MDPW01", 0x03, client, empty, body...]`, 6 or more frames.
    Reply {
        /// Address of the client the reply goes to, as given in the REQUEST.
        client: Bytes,
        /// Reply body, one or more frames.
        body: Vec<Bytes>,
    },
    /// HEARTBEAT: `[empty, "MDPW01", 0x04]`, exactly 3 frames.
    Heartbeat,
    /// DISCONNECT: `[empty, "MDPW01", 0x05]`, exactly 3 frames.
    Disconnect,
}

/// An MDP/Worker command sent by the broker to a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerMessage {
    /// REQUEST: `[empty, "MDPW01", 0x02, client, empty, body...]`, 6 or more frames.
    Request {
        /// Address of the requesting client; the worker returns it in its REPLY.
        client: Bytes,
        /// Request body, one or more frames.
        body: Vec<Bytes>,
    },
    /// HEARTBEAT: `[empty, "MDPW01", 0x04]`, exactly 3 frames.
    Heartbeat,
    /// DISCONNECT: `[empty, "MDPW01", 0x05]`, exactly 3 frames.
    Disconnect,
}

/// Reads `[command, ...]` after the worker header.
fn split_command(rest: &[Bytes]) -> Result<(u8, &[Bytes]), DecodeError> {
    match rest {
        [] => Err(DecodeError::MissingCommand),
        [cmd, ..] if cmd.len() != 1 => Err(DecodeError::BadCommandFrame(cmd.len())),
        [cmd, args @ ..] => Ok((cmd[0], args)),
    }
}

fn exact(
    command: &'static str,
    expected: &'static str,
    args: &[Bytes],
    want: usize,
    total: usize,
) -> Result<(), DecodeError> {
    if args.len() == want {
        Ok(())
    } else {
        Err(DecodeError::WrongFrameCount {
            command,
            expected,
            got: total,
        })
    }
}

/// Reads `[client, empty, body...]`, the envelope of REQUEST and REPLY.
fn decode_envelope(
    command: &'static str,
    args: &[Bytes],
    total: usize,
) -> Result<(Bytes, Vec<Bytes>), DecodeError> {
    match args {
        [client, ..] if client.is_empty() => Err(DecodeError::MissingClientAddress),
        [_, delimiter, ..] if !delimiter.is_empty() => Err(DecodeError::MissingDelimiter),
        [client, _, body @ ..] if !body.is_empty() => Ok((client.clone(), body.to_vec())),
        [] => Err(DecodeError::MissingClientAddress),
        _ => Err(DecodeError::WrongFrameCount {
            command,
            expected: "6 or more",
            got: total,
        }),
    }
}

pub(crate) fn encode_worker_command(prefix: Option<&Bytes>, command: u8) -> Vec<Bytes> {
    let mut frames = Vec::with_capacity(4);
    frames.extend(prefix.cloned());
    frames.extend([EMPTY, WORKER_HEADER_FRAME, command_frame(command)]);
    frames
}

pub(crate) fn encode_worker_envelope(
    prefix: Option<&Bytes>,
    command: u8,
    client: &Bytes,
    body: &[Bytes],
) -> Vec<Bytes> {
    let mut frames = Vec::with_capacity(6 + body.len());
    frames.extend(prefix.cloned());
    frames.extend([
        EMPTY,
        WORKER_HEADER_FRAME,
        command_frame(command),
        client.clone(),
        EMPTY,
    ]);
    if body.is_empty() {
        frames.push(EMPTY);
    } else {
        frames.extend(body.iter().cloned());
    }
    frames
}

impl WorkerMessage {
    /// Decodes a worker command as the broker receives it (identity already split off).
    pub fn decode(frames: &[Bytes], limits: &Limits) -> Result<Self, DecodeError> {
        limits.check(frames)?;
        let rest = expect_header(frames, WORKER_HEADER, "MDPW01")?;
        Self::decode_after_header(frames.len(), rest, limits)
    }

    fn decode_after_header(
        total: usize,
        rest: &[Bytes],
        limits: &Limits,
    ) -> Result<Self, DecodeError> {
        let (cmd, args) = split_command(rest)?;
        match cmd {
            command::READY => {
                exact("READY", "4", args, 1, total)?;
                limits.check_service(&args[0])?;
                Ok(Self::Ready {
                    service: args[0].clone(),
                })
            }
            command::REPLY => {
                let (client, body) = decode_envelope("REPLY", args, total)?;
                Ok(Self::Reply { client, body })
            }
            command::HEARTBEAT => {
                exact("HEARTBEAT", "3", args, 0, total)?;
                Ok(Self::Heartbeat)
            }
            command::DISCONNECT => {
                exact("DISCONNECT", "3", args, 0, total)?;
                Ok(Self::Disconnect)
            }
            other => Err(DecodeError::UnknownCommand(other)),
        }
    }

    /// Encodes for the worker's DEALER socket.
    pub fn encode(&self) -> Vec<Bytes> {
        match self {
            Self::Ready { service } => codec::ready_frames(Version::V01, service),
            Self::Reply { client, body } => codec::worker_final_frames(Version::V01, client, body),
            Self::Heartbeat => codec::heartbeat_frames(None, Version::V01),
            Self::Disconnect => codec::disconnect_frames(None, Version::V01),
        }
    }
}

impl BrokerMessage {
    /// Decodes a broker command as the worker's DEALER socket receives it.
    pub fn decode(frames: &[Bytes], limits: &Limits) -> Result<Self, DecodeError> {
        limits.check(frames)?;
        let total = frames.len();
        let rest = expect_header(frames, WORKER_HEADER, "MDPW01")?;
        let (cmd, args) = split_command(rest)?;
        match cmd {
            command::REQUEST => {
                let (client, body) = decode_envelope("REQUEST", args, total)?;
                Ok(Self::Request { client, body })
            }
            command::HEARTBEAT => {
                exact("HEARTBEAT", "3", args, 0, total)?;
                Ok(Self::Heartbeat)
            }
            command::DISCONNECT => {
                exact("DISCONNECT", "3", args, 0, total)?;
                Ok(Self::Disconnect)
            }
            other => Err(DecodeError::UnknownCommand(other)),
        }
    }

    /// Encodes for a DEALER peer (no identity frame).
    pub fn encode(&self) -> Vec<Bytes> {
        self.encode_inner(None)
    }

    /// Encodes for the broker's ROUTER socket, with the worker's identity in front.
    pub fn encode_routed(&self, identity: &Bytes) -> Vec<Bytes> {
        self.encode_inner(Some(identity))
    }

    /// Encodes a REQUEST for the broker's ROUTER socket straight from borrowed parts, without
    /// building a [`BrokerMessage`] (and its body vector) first: the broker's per-request path.
    pub fn request_routed(identity: &Bytes, client: &Bytes, body: &[Bytes]) -> Vec<Bytes> {
        codec::request_frames(Some(identity), Version::V01, client, body)
    }

    fn encode_inner(&self, prefix: Option<&Bytes>) -> Vec<Bytes> {
        match self {
            Self::Request { client, body } => {
                codec::request_frames(prefix, Version::V01, client, body)
            }
            Self::Heartbeat => codec::heartbeat_frames(prefix, Version::V01),
            Self::Disconnect => codec::disconnect_frames(prefix, Version::V01),
        }
    }
}

/// What a broker can receive on a shared ROUTER endpoint, after the identity frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerInbound {
    /// An MDP/Client REQUEST.
    Client(ClientRequest),
    /// An MDP/Worker command.
    Worker(WorkerMessage),
}

impl BrokerInbound {
    /// Decodes either sub-protocol by its header frame; `frames` starts at the empty frame 0.
    ///
    /// The limits are checked once, on the whole message, before either sub-protocol is read.
    pub fn decode(frames: &[Bytes], limits: &Limits) -> Result<Self, DecodeError> {
        limits.check(frames)?;
        let (header, rest) = split_header(frames)?;
        if header.as_ref() == CLIENT_HEADER {
            let (service, body) =
                decode_client_after_header(frames.len(), rest, limits, "REQUEST")?;
            Ok(Self::Client(ClientRequest { service, body }))
        } else if header.as_ref() == WORKER_HEADER {
            WorkerMessage::decode_after_header(frames.len(), rest, limits).map(Self::Worker)
        } else {
            Err(DecodeError::UnknownHeader(header.clone()))
        }
    }
}
