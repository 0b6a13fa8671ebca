//! One set of Majordomo commands for every MDP version, and one codec keyed by [`Version`].
//!
//! 7/MDP v0.1 and 18/MDP v0.2 say the same things with different frames: a client asks a
//! service, is answered (in v0.2 in parts: zero or more PARTIAL, then one FINAL), and a worker
//! registers, is handed requests, answers them, heartbeats and disconnects. The types here are
//! those commands; [`Version`] (with its [`Dialect`] for v0.2) picks the frames. Every command
//! decodes and encodes in every version and dialect, except the one the wire cannot carry: a
//! PARTIAL in v0.1, which has one reply per request ([`EncodeError::PartialInV01`]; the broker
//! and the v0.1 worker send the parts with the FINAL instead). A v0.1 REPLY decodes as a FINAL.
//!
//! The version-specific frame layouts are in [`crate::mdp`] and [`crate::mdp2`].

use bytes::Bytes;

pub use crate::mdp2::{classify, Dialect, Part, Sender, Version};
use crate::mdp2::{push_body, start, CLIENT_HEADER_FRAME, WORKER_HEADER_FRAME};
use crate::{mdp, mdp2, DecodeError, EncodeError, Limits};

/// A client's request to a broker: REQUEST in every version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The service asked.
    pub service: Bytes,
    /// Request body, one or more frames (an empty one is sent as one empty frame).
    pub body: Vec<Bytes>,
}

/// A broker's reply to a client: REPLY in v0.1 (always [`Part::Final`]), PARTIAL or FINAL in
/// v0.2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Whether more follow.
    pub part: Part,
    /// The service that answered. majortomo's v0.2 replies carry none: decoded, it is empty.
    pub service: Bytes,
    /// Reply body, one or more frames.
    pub body: Vec<Bytes>,
}

/// A worker's command to the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromWorker {
    /// READY: registers the worker for one service.
    Ready {
        /// The service.
        service: Bytes,
    },
    /// REPLY (v0.1, always [`Part::Final`]), PARTIAL or FINAL (v0.2) to the request of `client`.
    Reply {
        /// Whether more follow.
        part: Part,
        /// The client's address, as the REQUEST gave it.
        client: Bytes,
        /// Reply body, one or more frames.
        body: Vec<Bytes>,
    },
    /// HEARTBEAT.
    Heartbeat,
    /// DISCONNECT.
    Disconnect,
}

/// The broker's command to a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToWorker {
    /// REQUEST: a client's request for the worker's service.
    Request {
        /// The client's address; the worker returns it with its reply.
        client: Bytes,
        /// Request body, one or more frames.
        body: Vec<Bytes>,
    },
    /// HEARTBEAT.
    Heartbeat,
    /// DISCONNECT.
    Disconnect,
}

/// What a broker receives on a shared ROUTER endpoint (identity split off).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// A client's request.
    Client(Request),
    /// A worker's command.
    Worker(FromWorker),
}

impl Request {
    /// Decodes a request in `version` as a broker receives it (identity split off).
    pub fn decode(
        frames: &[Bytes],
        version: Version,
        limits: &Limits,
    ) -> Result<Self, DecodeError> {
        match version {
            Version::V01 => {
                let mdp::ClientRequest { service, body } =
                    mdp::ClientRequest::decode(frames, limits)?;
                Ok(Self { service, body })
            }
            Version::V02(dialect) => {
                let mdp2::ClientRequest { service, body } =
                    mdp2::ClientRequest::decode(frames, dialect, limits)?;
                Ok(Self { service, body })
            }
        }
    }

    /// Encodes for a client's DEALER socket in `version`.
    pub fn encode(&self, version: Version) -> Vec<Bytes> {
        request_to_broker_frames(version, &self.service, &self.body)
    }
}

/// A client's REQUEST from borrowed parts.
pub(crate) fn request_to_broker_frames(
    version: Version,
    service: &Bytes,
    body: &[Bytes],
) -> Vec<Bytes> {
    match version {
        Version::V01 => mdp::encode_client_message(None, service, body),
        Version::V02(dialect) => {
            let command = match dialect {
                Dialect::Rfc18 => mdp2::client_command::REQUEST,
                Dialect::Majortomo => mdp2::worker_command::REQUEST,
            };
            let mut frames = start(None, dialect, CLIENT_HEADER_FRAME, command);
            frames.push(service.clone());
            push_body(&mut frames, body);
            frames
        }
    }
}

impl Reply {
    /// Decodes a reply in `version` as a client's DEALER socket receives it.
    pub fn decode(
        frames: &[Bytes],
        version: Version,
        limits: &Limits,
    ) -> Result<Self, DecodeError> {
        match version {
            Version::V01 => {
                let mdp::ClientReply { service, body } = mdp::ClientReply::decode(frames, limits)?;
                Ok(Self {
                    part: Part::Final,
                    service,
                    body,
                })
            }
            Version::V02(dialect) => {
                let mdp2::ClientReply {
                    part,
                    service,
                    body,
                } = mdp2::ClientReply::decode(frames, dialect, limits)?;
                Ok(Self {
                    part,
                    service,
                    body,
                })
            }
        }
    }

    /// Encodes in `version`, behind `identity` for a ROUTER socket if given.
    pub fn encode(
        &self,
        identity: Option<&Bytes>,
        version: Version,
    ) -> Result<Vec<Bytes>, EncodeError> {
        reply_frames(identity, version, self.part, &self.service, &self.body)
    }
}

/// A reply to a client from borrowed parts.
pub(crate) fn reply_frames(
    identity: Option<&Bytes>,
    version: Version,
    part: Part,
    service: &Bytes,
    body: &[Bytes],
) -> Result<Vec<Bytes>, EncodeError> {
    match (version, part) {
        (Version::V01, Part::Final) => Ok(final_frames(identity, version, service, body)),
        (Version::V01, Part::Partial) => Err(EncodeError::PartialInV01),
        (Version::V02(dialect), part) => {
            Ok(v02_reply_frames(identity, dialect, part, service, body))
        }
    }
}

/// The last (in v0.1 the only) reply to a client: every version has one.
pub(crate) fn final_frames(
    identity: Option<&Bytes>,
    version: Version,
    service: &Bytes,
    body: &[Bytes],
) -> Vec<Bytes> {
    match version {
        Version::V01 => mdp::encode_client_message(identity, service, body),
        Version::V02(dialect) => v02_reply_frames(identity, dialect, Part::Final, service, body),
    }
}

/// A PARTIAL or FINAL to a v0.2 client in `dialect`.
pub(crate) fn v02_reply_frames(
    identity: Option<&Bytes>,
    dialect: Dialect,
    part: Part,
    service: &Bytes,
    body: &[Bytes],
) -> Vec<Bytes> {
    let command = match (dialect, part) {
        (Dialect::Rfc18, Part::Partial) => mdp2::client_command::PARTIAL,
        (Dialect::Rfc18, Part::Final) => mdp2::client_command::FINAL,
        (Dialect::Majortomo, Part::Partial) => mdp2::worker_command::PARTIAL,
        (Dialect::Majortomo, Part::Final) => mdp2::worker_command::FINAL,
    };
    let mut frames = start(identity, dialect, CLIENT_HEADER_FRAME, command);
    // majortomo's replies to clients carry no service frame.
    match dialect {
        Dialect::Rfc18 => frames.push(service.clone()),
        Dialect::Majortomo => {}
    }
    push_body(&mut frames, body);
    frames
}

impl FromWorker {
    /// Decodes a worker command in `version` as the broker receives it (identity split off).
    pub fn decode(
        frames: &[Bytes],
        version: Version,
        limits: &Limits,
    ) -> Result<Self, DecodeError> {
        match version {
            Version::V01 => mdp::WorkerMessage::decode(frames, limits).map(Self::from),
            Version::V02(dialect) => {
                mdp2::WorkerMessage::decode(frames, dialect, limits).map(Self::from)
            }
        }
    }

    /// Encodes for a worker's DEALER socket in `version`.
    pub fn encode(&self, version: Version) -> Result<Vec<Bytes>, EncodeError> {
        match (self, version) {
            (Self::Ready { service }, version) => Ok(ready_frames(version, service)),
            (
                Self::Reply {
                    part: Part::Final,
                    client,
                    body,
                },
                version,
            ) => Ok(worker_final_frames(version, client, body)),
            (
                Self::Reply {
                    part: Part::Partial,
                    ..
                },
                Version::V01,
            ) => Err(EncodeError::PartialInV01),
            (
                Self::Reply {
                    part: Part::Partial,
                    client,
                    body,
                },
                Version::V02(dialect),
            ) => Ok(worker_partial_frames(dialect, client, body)),
            // The same frames in both directions.
            (Self::Heartbeat, version) => Ok(heartbeat_frames(None, version)),
            (Self::Disconnect, version) => Ok(disconnect_frames(None, version)),
        }
    }
}

/// READY from a worker.
pub(crate) fn ready_frames(version: Version, service: &Bytes) -> Vec<Bytes> {
    let mut frames = match version {
        Version::V01 => mdp::encode_worker_command(None, mdp::command::READY),
        Version::V02(dialect) => start(
            None,
            dialect,
            WORKER_HEADER_FRAME,
            mdp2::worker_command::READY,
        ),
    };
    frames.push(service.clone());
    frames
}

/// A worker's last (in v0.1 its only) reply to the request of `client`.
pub(crate) fn worker_final_frames(version: Version, client: &Bytes, body: &[Bytes]) -> Vec<Bytes> {
    match version {
        Version::V01 => mdp::encode_worker_envelope(None, mdp::command::REPLY, client, body),
        Version::V02(dialect) => {
            worker_envelope(None, dialect, mdp2::worker_command::FINAL, client, body)
        }
    }
}

/// A worker's PARTIAL to the request of `client` (v0.2 only).
pub(crate) fn worker_partial_frames(
    dialect: Dialect,
    client: &Bytes,
    body: &[Bytes],
) -> Vec<Bytes> {
    worker_envelope(None, dialect, mdp2::worker_command::PARTIAL, client, body)
}

/// `[empty,] MDPW02, command, client, empty, body...`.
fn worker_envelope(
    identity: Option<&Bytes>,
    dialect: Dialect,
    command: u8,
    client: &Bytes,
    body: &[Bytes],
) -> Vec<Bytes> {
    let mut frames = start(identity, dialect, WORKER_HEADER_FRAME, command);
    frames.extend([client.clone(), Bytes::new()]);
    push_body(&mut frames, body);
    frames
}

/// HEARTBEAT, either way, behind `identity` if given.
pub(crate) fn heartbeat_frames(identity: Option<&Bytes>, version: Version) -> Vec<Bytes> {
    match version {
        Version::V01 => mdp::encode_worker_command(identity, mdp::command::HEARTBEAT),
        Version::V02(dialect) => start(
            identity,
            dialect,
            WORKER_HEADER_FRAME,
            mdp2::worker_command::HEARTBEAT,
        ),
    }
}

/// DISCONNECT, either way, behind `identity` if given.
pub(crate) fn disconnect_frames(identity: Option<&Bytes>, version: Version) -> Vec<Bytes> {
    match version {
        Version::V01 => mdp::encode_worker_command(identity, mdp::command::DISCONNECT),
        Version::V02(dialect) => start(
            identity,
            dialect,
            WORKER_HEADER_FRAME,
            mdp2::worker_command::DISCONNECT,
        ),
    }
}

impl From<mdp::WorkerMessage> for FromWorker {
    fn from(message: mdp::WorkerMessage) -> Self {
        match message {
            mdp::WorkerMessage::Ready { service } => Self::Ready { service },
            mdp::WorkerMessage::Reply { client, body } => Self::Reply {
                part: Part::Final,
                client,
                body,
            },
            mdp::WorkerMessage::Heartbeat => Self::Heartbeat,
            mdp::WorkerMessage::Disconnect => Self::Disconnect,
        }
    }
}

impl From<mdp2::WorkerMessage> for FromWorker {
    fn from(message: mdp2::WorkerMessage) -> Self {
        match message {
            mdp2::WorkerMessage::Ready { service } => Self::Ready { service },
            mdp2::WorkerMessage::Reply { part, client, body } => Self::Reply { part, client, body },
            mdp2::WorkerMessage::Heartbeat => Self::Heartbeat,
            mdp2::WorkerMessage::Disconnect => Self::Disconnect,
        }
    }
}

impl ToWorker {
    /// Decodes a broker command in `version` as a worker's DEALER socket receives it.
    pub fn decode(
        frames: &[Bytes],
        version: Version,
        limits: &Limits,
    ) -> Result<Self, DecodeError> {
        match version {
            Version::V01 => Ok(match mdp::BrokerMessage::decode(frames, limits)? {
                mdp::BrokerMessage::Request { client, body } => Self::Request { client, body },
                mdp::BrokerMessage::Heartbeat => Self::Heartbeat,
                mdp::BrokerMessage::Disconnect => Self::Disconnect,
            }),
            Version::V02(dialect) => Ok(
                match mdp2::BrokerMessage::decode(frames, dialect, limits)? {
                    mdp2::BrokerMessage::Request { client, body } => Self::Request { client, body },
                    mdp2::BrokerMessage::Heartbeat => Self::Heartbeat,
                    mdp2::BrokerMessage::Disconnect => Self::Disconnect,
                },
            ),
        }
    }

    /// Encodes in `version`, behind `identity` for the broker's ROUTER socket if given.
    pub fn encode(&self, identity: Option<&Bytes>, version: Version) -> Vec<Bytes> {
        match self {
            Self::Request { client, body } => request_frames(identity, version, client, body),
            Self::Heartbeat => heartbeat_frames(identity, version),
            Self::Disconnect => disconnect_frames(identity, version),
        }
    }
}

/// A REQUEST to a worker from borrowed parts (the broker's per-request path).
pub(crate) fn request_frames(
    identity: Option<&Bytes>,
    version: Version,
    client: &Bytes,
    body: &[Bytes],
) -> Vec<Bytes> {
    match version {
        Version::V01 => mdp::encode_worker_envelope(identity, mdp::command::REQUEST, client, body),
        Version::V02(dialect) => worker_envelope(
            identity,
            dialect,
            mdp2::worker_command::REQUEST,
            client,
            body,
        ),
    }
}

impl Inbound {
    /// Decodes what a broker receives, in the version and dialect its header names
    /// ([`classify`]); a message with a header of neither version is read as v0.1, whose
    /// decoder says what is wrong with it.
    pub fn decode(frames: &[Bytes], limits: &Limits) -> Result<(Version, Self), DecodeError> {
        Self::decode_classified(frames, classify(frames), limits)
    }

    /// As [`Inbound::decode`], with [`classify`]'s answer already in hand.
    pub(crate) fn decode_classified(
        frames: &[Bytes],
        classified: Option<(Version, Sender)>,
        limits: &Limits,
    ) -> Result<(Version, Self), DecodeError> {
        match classified {
            Some((version @ Version::V02(_), Sender::Client)) => {
                Request::decode(frames, version, limits).map(|r| (version, Self::Client(r)))
            }
            Some((version @ Version::V02(_), Sender::Worker)) => {
                FromWorker::decode(frames, version, limits).map(|m| (version, Self::Worker(m)))
            }
            Some((Version::V01, _)) | None => Ok((
                Version::V01,
                match mdp::BrokerInbound::decode(frames, limits)? {
                    mdp::BrokerInbound::Client(mdp::ClientRequest { service, body }) => {
                        Self::Client(Request { service, body })
                    }
                    mdp::BrokerInbound::Worker(message) => Self::Worker(message.into()),
                },
            )),
        }
    }
}
