use std::sync::Arc;

use bytes::BytesMut;
use crypto_box::aead::OsRng;

use super::*;
use crate::inspect::frame_header;

/// The body of the one command (or MESSAGE frame) in `out`, its header removed.
fn body(out: &BytesMut) -> Vec<u8> {
    let (header, size) = frame_header(out).unwrap();
    assert_eq!(out.len(), header + size as usize, "one whole command");
    out[header..].to_vec()
}

struct Pair {
    server_keys: Arc<CurveKeyPair>,
    client_keys: Arc<CurveKeyPair>,
}

impl Pair {
    fn new() -> Self {
        Self {
            server_keys: Arc::new(CurveKeyPair::generate()),
            client_keys: Arc::new(CurveKeyPair::generate()),
        }
    }

    /// HELLO and WELCOME, then the client's INITIATE body.
    fn to_initiate(&self, server: &mut CurveServer) -> (CurveClient, Vec<u8>) {
        let mut client = CurveClient::new(
            &mut OsRng,
            self.server_keys.public(),
            self.client_keys.clone(),
        );
        let mut out = BytesMut::new();
        client.hello(&mut out);
        let hello = body(&out);
        assert_eq!(hello.len(), 200);
        out.clear();
        server.hello(&mut OsRng, &hello, &mut out).unwrap();
        let welcome = body(&out);
        assert_eq!(welcome.len(), 168);
        out.clear();
        client
            .welcome(
                &mut OsRng,
                &welcome,
                b"\x0bSocket-Type\0\0\0\x06DEALER",
                &mut out,
            )
            .unwrap();
        (client, body(&out))
    }

    fn sessions(&self) -> (Session, Session) {
        let mut server = CurveServer::new(self.server_keys.clone());
        let (mut client, initiate) = self.to_initiate(&mut server);
        let initiated = server.initiate(&initiate).unwrap();
        assert_eq!(initiated.client_key, self.client_keys.public());
        assert_eq!(&initiated.metadata[..], b"\x0bSocket-Type\0\0\0\x06DEALER");
        let mut out = BytesMut::new();
        let server_session = initiated.accept(b"\x0bSocket-Type\0\0\0\x06ROUTER", &mut out);
        let (metadata, client_session) = client.ready(&body(&out)).unwrap();
        assert_eq!(&metadata[..], b"\x0bSocket-Type\0\0\0\x06ROUTER");
        (client_session, server_session)
    }
}

fn open(session: &mut Session, sealed: &BytesMut) -> Result<(u8, Vec<u8>), CurveError> {
    let mut command = body(sealed);
    let (flags, range) = session.open(&mut command)?;
    Ok((flags, command[range].to_vec()))
}

#[test]
fn a_client_and_a_server_agree_and_exchange_frames_both_ways() {
    let pair = Pair::new();
    let (mut client, mut server) = pair.sessions();
    for (i, len) in [0usize, 1, 200, 300, 70_000].into_iter().enumerate() {
        let frame: Vec<u8> = (0..len).map(|b| (b * 7 + i) as u8).collect();
        let mut out = BytesMut::new();
        client.seal(MESSAGE_MORE, &frame, &mut out);
        assert_eq!(out.len(), Session::sealed_len(len));
        assert_eq!(
            open(&mut server, &out).unwrap(),
            (MESSAGE_MORE, frame.clone())
        );
        out.clear();
        server.seal(MESSAGE_COMMAND, &frame, &mut out);
        assert_eq!(open(&mut client, &out).unwrap(), (MESSAGE_COMMAND, frame));
    }
}

#[test]
fn a_replayed_or_reordered_message_is_refused() {
    let (mut client, mut server) = Pair::new().sessions();
    let (mut first, mut second) = (BytesMut::new(), BytesMut::new());
    client.seal(0, b"one", &mut first);
    client.seal(0, b"two", &mut second);
    assert!(open(&mut server, &second).is_ok());
    assert!(matches!(
        open(&mut server, &first),
        Err(CurveError::Nonce { got: 3, last: 4 })
    ));
    assert!(matches!(
        open(&mut server, &second),
        Err(CurveError::Nonce { .. })
    ));
}

#[test]
fn an_altered_message_does_not_open_and_reserved_flags_are_refused() {
    let (mut client, mut server) = Pair::new().sessions();
    let mut out = BytesMut::new();
    client.seal(0, b"hello", &mut out);
    let last = out.len() - 1;
    out[last] ^= 1;
    assert_eq!(open(&mut server, &out), Err(CurveError::Box("MESSAGE")));
    out.clear();
    client.seal(0x04, b"hello", &mut out);
    assert_eq!(open(&mut server, &out), Err(CurveError::Flags(0x04)));
    let mut short = body(&out);
    short.truncate(MESSAGE_OVERHEAD - 1);
    assert_eq!(
        server.open(&mut short),
        Err(CurveError::Malformed("MESSAGE"))
    );
}

#[test]
fn a_client_with_the_wrong_server_key_fails_at_hello() {
    let pair = Pair::new();
    let mut server = CurveServer::new(pair.server_keys.clone());
    let mut client = CurveClient::new(
        &mut OsRng,
        CurveKeyPair::generate().public(),
        pair.client_keys.clone(),
    );
    let mut out = BytesMut::new();
    client.hello(&mut out);
    let mut reply = BytesMut::new();
    assert_eq!(
        server.hello(&mut OsRng, &body(&out), &mut reply),
        Err(CurveError::Box("HELLO"))
    );
    assert!(
        reply.is_empty(),
        "nothing is sent to a client that fails HELLO"
    );
}

#[test]
fn malformed_handshake_commands_are_refused() {
    let pair = Pair::new();
    let mut server = CurveServer::new(pair.server_keys.clone());
    let mut out = BytesMut::new();
    let mut client = CurveClient::new(
        &mut OsRng,
        pair.server_keys.public(),
        pair.client_keys.clone(),
    );
    client.hello(&mut out);
    let hello = body(&out);
    // Wrong length, wrong name, wrong version.
    assert!(server.hello(&mut OsRng, &hello[..199], &mut out).is_err());
    let mut renamed = hello.clone();
    renamed[1] = b'J';
    assert!(server.hello(&mut OsRng, &renamed, &mut out).is_err());
    let mut version = hello.clone();
    version[6] = 2;
    assert_eq!(
        server.hello(&mut OsRng, &version, &mut out),
        Err(CurveError::Version(2, 0))
    );
    // INITIATE before HELLO.
    assert!(server.initiate(&[0; 300]).is_err());
}

#[test]
fn an_altered_initiate_or_a_replayed_nonce_is_refused() {
    let pair = Pair::new();
    // Each byte class of INITIATE altered: cookie, nonce, box.
    for at in [20, 9 + 96 + 7, 9 + 96 + 8 + 40, 256] {
        let mut server = CurveServer::new(pair.server_keys.clone());
        let (_, mut initiate) = pair.to_initiate(&mut server);
        initiate[at] ^= 0x20;
        assert!(server.initiate(&initiate).is_err(), "altered at {at}");
    }
    // An INITIATE replayed on another connection: its cookie is not that connection's.
    let mut first = CurveServer::new(pair.server_keys.clone());
    let (_, initiate) = pair.to_initiate(&mut first);
    let mut second = CurveServer::new(pair.server_keys.clone());
    let _ = pair.to_initiate(&mut second);
    assert_eq!(
        second.initiate(&initiate).unwrap_err(),
        CurveError::Box("cookie")
    );
    assert!(first.initiate(&initiate).is_ok());
    // Twice on the same connection: the handshake is over.
    assert!(first.initiate(&initiate).is_err());
}

#[test]
fn a_client_claiming_a_key_it_does_not_hold_is_refused_by_the_vouch() {
    let pair = Pair::new();
    let claimed = CurveKeyPair::generate().public();
    let forger = Pair {
        server_keys: pair.server_keys.clone(),
        client_keys: Arc::new(CurveKeyPair::forged(claimed, &pair.client_keys)),
    };
    let mut server = CurveServer::new(pair.server_keys.clone());
    let (_, initiate) = forger.to_initiate(&mut server);
    assert_eq!(
        server.initiate(&initiate).unwrap_err(),
        CurveError::Box("vouch")
    );
}

#[test]
fn an_error_from_the_server_is_a_refusal_with_its_reason() {
    let pair = Pair::new();
    let mut client = CurveClient::new(
        &mut OsRng,
        pair.server_keys.public(),
        pair.client_keys.clone(),
    );
    let mut out = BytesMut::new();
    client.hello(&mut out);
    out.clear();
    encode_error(&mut out, "not allowed");
    assert_eq!(
        client.welcome(&mut OsRng, &body(&out), b"", &mut BytesMut::new()),
        Err(CurveError::Refused("not allowed".into()))
    );
}
