//! The CurveZMQ handshake, server and client side. Each step takes a command's body (from its
//! name-length octet on, without the ZMTP command header) and appends the answering command,
//! header included.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use crypto_box::aead::rand_core::CryptoRngCore;
use crypto_box::aead::KeyInit;
use crypto_box::SalsaBox;
use crypto_secretbox::XSalsa20Poly1305;

use super::message;
use super::{
    append_box, command_header, long_nonce, open_in_place, short_nonce, CurveError, CurveKeyPair,
    CurvePublicKey, Session, KEY, TAG,
};

const HELLO: &[u8] = b"\x05HELLO";
const WELCOME: &[u8] = b"\x07WELCOME";
const INITIATE: &[u8] = b"\x08INITIATE";
const READY: &[u8] = b"\x05READY";
const ERROR: &[u8] = b"\x05ERROR";

/// HELLO's length (RFC 26: "This command SHALL be 200 octets long").
const HELLO_LEN: usize = 200;
/// WELCOME's length (RFC 26: "This command SHALL be 168 octets long").
const WELCOME_LEN: usize = 168;
/// The shortest INITIATE (RFC 26: "at least 257 octets long").
const INITIATE_MIN: usize = 257;
/// The shortest READY (RFC 26: "at least 30 octets long").
const READY_MIN: usize = 30;
/// HELLO's anti-amplification padding as libzmq writes it (RFC 25's layout: 72 zero octets
/// after the version, so that HELLO is 200 octets with its 6-octet name).
const HELLO_PADDING: usize = 72;
/// The cookie: a long nonce and a box of 64 octets.
const COOKIE: usize = 16 + TAG + 2 * KEY;
/// The vouch: a long nonce and a box of 64 octets.
const VOUCH: usize = 16 + TAG + 2 * KEY;

fn random<const N: usize>(rng: &mut impl CryptoRngCore) -> [u8; N] {
    let mut out = [0; N];
    rng.fill_bytes(&mut out);
    out
}

fn key_at(body: &[u8], at: usize) -> [u8; KEY] {
    let mut key = [0; KEY];
    key.copy_from_slice(&body[at..at + KEY]);
    key
}

fn nonce_at(body: &[u8], at: usize) -> u64 {
    let mut nonce = [0; 8];
    nonce.copy_from_slice(&body[at..at + 8]);
    u64::from_be_bytes(nonce)
}

/// Where a server's handshake stands.
enum ServerState {
    Hello,
    /// WELCOME sent: the cookie key, the client's transient key and HELLO's nonce, until INITIATE.
    Initiate {
        cookie_key: [u8; KEY],
        transient: [u8; KEY],
        hello_nonce: u64,
    },
    Done,
}

/// The server side of one connection's handshake: HELLO in, WELCOME out; INITIATE in, and the
/// caller decides whether the client may in, with [`Initiated::accept`] (READY) or
/// [`super::encode_error`].
pub struct CurveServer {
    keys: Arc<CurveKeyPair>,
    state: ServerState,
}

impl std::fmt::Debug for CurveServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CurveServer")
            .field("public", &self.keys.public())
            .finish_non_exhaustive()
    }
}

/// A client whose INITIATE is valid: who it is, and what it announced.
pub struct Initiated {
    /// The client's permanent public key, proven by the vouch.
    pub client_key: CurvePublicKey,
    /// The metadata the client sent (RFC 37's `metadata`: Socket-Type, Identity, ...).
    pub metadata: Bytes,
    /// The box of the handshake's last command, READY, under the transient keys.
    cipher: XSalsa20Poly1305,
    session: Session,
}

impl std::fmt::Debug for Initiated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Initiated")
            .field("client_key", &self.client_key)
            .finish_non_exhaustive()
    }
}

impl Initiated {
    /// Lets the client in: appends READY with the server's `metadata` and returns the session.
    pub fn accept(mut self, metadata: &[u8], out: &mut BytesMut) -> Session {
        let session = &mut self.session;
        session.sent += 1;
        command_header(out, READY.len() + 8 + TAG + metadata.len());
        out.put_slice(READY);
        out.put_u64(session.sent);
        let nonce = short_nonce(b"CurveZMQREADY---", session.sent);
        append_box(&self.cipher, &nonce, &[metadata], out);
        self.session
    }
}

impl CurveServer {
    /// A handshake for a new connection to the server holding `keys`.
    pub fn new(keys: Arc<CurveKeyPair>) -> Self {
        Self {
            keys,
            state: ServerState::Hello,
        }
    }

    /// Whether HELLO is still awaited.
    pub fn awaits_hello(&self) -> bool {
        matches!(self.state, ServerState::Hello)
    }

    /// Takes HELLO and appends WELCOME.
    pub fn hello(
        &mut self,
        rng: &mut impl CryptoRngCore,
        body: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), CurveError> {
        if !matches!(self.state, ServerState::Hello) {
            return Err(CurveError::Malformed("HELLO"));
        }
        if body.len() != HELLO_LEN || !body.starts_with(HELLO) {
            return Err(CurveError::Malformed("HELLO"));
        }
        if body[6..8] != [1, 0] {
            return Err(CurveError::Version(body[6], body[7]));
        }
        // RFC 26: "An anti-amplification padding field ... all zero"; "The server SHALL
        // validate all fields".
        if body[8..8 + HELLO_PADDING].iter().any(|&b| b != 0) {
            return Err(CurveError::Malformed("HELLO"));
        }
        let at = 8 + HELLO_PADDING;
        let transient = key_at(body, at);
        let hello_nonce = nonce_at(body, at + KEY);
        let mut signature = [0u8; TAG + 64];
        signature.copy_from_slice(&body[at + KEY + 8..]);
        let cipher = SalsaBox::new(
            &CurvePublicKey::from_bytes(transient).to_box_key(),
            self.keys.secret(),
        );
        let nonce = short_nonce(b"CurveZMQHELLO---", hello_nonce);
        open_in_place(&cipher, &nonce, &mut signature, "HELLO")?;
        if signature[TAG..].iter().any(|&b| b != 0) {
            return Err(CurveError::Malformed("HELLO"));
        }
        // RFC 26: "it SHALL generate a new transient key pair ... The server SHALL not keep
        // this transient key pair": s' travels in the cookie, under a key of this connection.
        let server_transient = CurveKeyPair::generate_with(rng);
        let cookie_key: [u8; KEY] = random(rng);
        let cookie_nonce: [u8; 16] = random(rng);
        let mut cookie = BytesMut::with_capacity(COOKIE);
        cookie.put_slice(&cookie_nonce);
        append_box(
            &XSalsa20Poly1305::new(&cookie_key.into()),
            &long_nonce(b"COOKIE--", &cookie_nonce),
            &[&transient, &server_transient.secret().to_bytes()],
            &mut cookie,
        );
        let welcome_nonce: [u8; 16] = random(rng);
        command_header(out, WELCOME_LEN);
        out.put_slice(WELCOME);
        out.put_slice(&welcome_nonce);
        append_box(
            &cipher,
            &long_nonce(b"WELCOME-", &welcome_nonce),
            &[server_transient.public().as_bytes(), &cookie],
            out,
        );
        self.state = ServerState::Initiate {
            cookie_key,
            transient,
            hello_nonce,
        };
        Ok(())
    }

    /// Takes INITIATE: checks the cookie, the box and the vouch, and returns who the client is.
    /// The handshake is over either way.
    pub fn initiate(&mut self, body: &[u8]) -> Result<Initiated, CurveError> {
        let ServerState::Initiate {
            cookie_key,
            transient,
            hello_nonce,
        } = std::mem::replace(&mut self.state, ServerState::Done)
        else {
            return Err(CurveError::Malformed("INITIATE"));
        };
        if body.len() < INITIATE_MIN || !body.starts_with(INITIATE) {
            return Err(CurveError::Malformed("INITIATE"));
        }
        // The cookie: C' and s', sealed by this connection's cookie key.
        let at = INITIATE.len();
        let mut cookie = [0u8; COOKIE];
        cookie.copy_from_slice(&body[at..at + COOKIE]);
        let cookie_nonce: [u8; 16] = cookie[..16].try_into().unwrap_or_default();
        open_in_place(
            &XSalsa20Poly1305::new(&cookie_key.into()),
            &long_nonce(b"COOKIE--", &cookie_nonce),
            &mut cookie[16..],
            "cookie",
        )?;
        let opened = &cookie[16 + TAG..];
        if opened[..KEY] != transient {
            return Err(CurveError::Cookie);
        }
        let server_secret = crypto_box::SecretKey::from(key_at(opened, KEY));
        let at = at + COOKIE;
        let nonce = nonce_at(body, at);
        if nonce <= hello_nonce {
            return Err(CurveError::Nonce {
                got: nonce,
                last: hello_nonce,
            });
        }
        let transient_key = CurvePublicKey::from_bytes(transient).to_box_key();
        // The transient keys' box key, once, for INITIATE, READY and the session.
        let key = message::box_key(&transient_key, &server_secret);
        let cipher = XSalsa20Poly1305::new(&key);
        let mut sealed = body[at + 8..].to_vec();
        open_in_place(
            &cipher,
            &short_nonce(b"CurveZMQINITIATE", nonce),
            &mut sealed,
            "INITIATE",
        )?;
        let opened = &sealed[TAG..];
        if opened.len() < KEY + VOUCH {
            return Err(CurveError::Malformed("INITIATE"));
        }
        let client_key = CurvePublicKey::from_bytes(key_at(opened, 0));
        // The vouch: C' and S, from C to S'. It proves the client holds C's secret key.
        let mut vouch = [0u8; VOUCH];
        vouch.copy_from_slice(&opened[KEY..KEY + VOUCH]);
        let vouch_nonce: [u8; 16] = vouch[..16].try_into().unwrap_or_default();
        open_in_place(
            &SalsaBox::new(&client_key.to_box_key(), &server_secret),
            &long_nonce(b"VOUCH---", &vouch_nonce),
            &mut vouch[16..],
            "vouch",
        )?;
        let vouched = &vouch[16 + TAG..];
        if vouched[..KEY] != transient || vouched[KEY..] != self.keys.public().as_bytes()[..] {
            return Err(CurveError::Vouch);
        }
        Ok(Initiated {
            client_key,
            metadata: Bytes::copy_from_slice(&opened[KEY + VOUCH..]),
            session: Session::new(&key, 0, nonce, true),
            cipher,
        })
    }
}

/// Where a client's handshake stands.
enum ClientState {
    Welcome,
    Ready {
        cipher: XSalsa20Poly1305,
        key: zeroize::Zeroizing<crypto_secretbox::Key>,
    },
    Done,
}

/// The client side of one connection's handshake: [`CurveClient::hello`] first, then
/// [`CurveClient::welcome`] (INITIATE out), then [`CurveClient::ready`] (the session).
pub struct CurveClient {
    server: CurvePublicKey,
    keys: Arc<CurveKeyPair>,
    transient: CurveKeyPair,
    sent: u64,
    state: ClientState,
}

impl std::fmt::Debug for CurveClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CurveClient")
            .field("server", &self.server)
            .field("public", &self.keys.public())
            .finish_non_exhaustive()
    }
}

impl CurveClient {
    /// A handshake with the server whose public key is `server`, as the holder of `keys`, with a
    /// transient pair from `rng` (RFC 26: "a unique key pair for each connection").
    pub fn new(
        rng: &mut impl CryptoRngCore,
        server: CurvePublicKey,
        keys: Arc<CurveKeyPair>,
    ) -> Self {
        Self {
            server,
            keys,
            transient: CurveKeyPair::generate_with(rng),
            sent: 0,
            state: ClientState::Welcome,
        }
    }

    /// Appends HELLO.
    pub fn hello(&mut self, out: &mut BytesMut) {
        self.sent += 1;
        command_header(out, HELLO_LEN);
        out.put_slice(HELLO);
        out.put_slice(&[1, 0]);
        out.put_bytes(0, HELLO_PADDING);
        out.put_slice(self.transient.public().as_bytes());
        out.put_u64(self.sent);
        let cipher = SalsaBox::new(&self.server.to_box_key(), self.transient.secret());
        let nonce = short_nonce(b"CurveZMQHELLO---", self.sent);
        append_box(&cipher, &nonce, &[&[0; 64]], out);
    }

    /// Takes WELCOME (or ERROR) and appends INITIATE with `metadata`.
    pub fn welcome(
        &mut self,
        rng: &mut impl CryptoRngCore,
        body: &[u8],
        metadata: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), CurveError> {
        refused(body)?;
        if !matches!(self.state, ClientState::Welcome) {
            return Err(CurveError::Malformed("WELCOME"));
        }
        if body.len() != WELCOME_LEN || !body.starts_with(WELCOME) {
            return Err(CurveError::Malformed("WELCOME"));
        }
        let welcome_nonce: [u8; 16] = body[8..24].try_into().unwrap_or_default();
        let mut sealed = [0u8; TAG + KEY + COOKIE];
        sealed.copy_from_slice(&body[24..]);
        let cipher = SalsaBox::new(&self.server.to_box_key(), self.transient.secret());
        open_in_place(
            &cipher,
            &long_nonce(b"WELCOME-", &welcome_nonce),
            &mut sealed,
            "WELCOME",
        )?;
        let server_transient = CurvePublicKey::from_bytes(key_at(&sealed, TAG)).to_box_key();
        let cookie = &sealed[TAG + KEY..];
        // The vouch: C' and S, from C to S'.
        let vouch_nonce: [u8; 16] = random(rng);
        let mut vouch = BytesMut::with_capacity(VOUCH);
        vouch.put_slice(&vouch_nonce);
        append_box(
            &SalsaBox::new(&server_transient, self.keys.secret()),
            &long_nonce(b"VOUCH---", &vouch_nonce),
            &[self.transient.public().as_bytes(), self.server.as_bytes()],
            &mut vouch,
        );
        // The transient keys' box key, once, for INITIATE, READY and the session.
        let key = message::box_key(&server_transient, self.transient.secret());
        let session = XSalsa20Poly1305::new(&key);
        self.sent += 1;
        command_header(
            out,
            INITIATE.len() + COOKIE + 8 + TAG + KEY + VOUCH + metadata.len(),
        );
        out.put_slice(INITIATE);
        out.put_slice(cookie);
        out.put_u64(self.sent);
        append_box(
            &session,
            &short_nonce(b"CurveZMQINITIATE", self.sent),
            &[self.keys.public().as_bytes(), &vouch, metadata],
            out,
        );
        self.state = ClientState::Ready {
            cipher: session,
            key,
        };
        Ok(())
    }

    /// Takes READY (or ERROR): returns the server's metadata and the session.
    pub fn ready(&mut self, body: &[u8]) -> Result<(Bytes, Session), CurveError> {
        refused(body)?;
        let ClientState::Ready { cipher, key } =
            std::mem::replace(&mut self.state, ClientState::Done)
        else {
            return Err(CurveError::Malformed("READY"));
        };
        if body.len() < READY_MIN || !body.starts_with(READY) {
            return Err(CurveError::Malformed("READY"));
        }
        let nonce = nonce_at(body, READY.len());
        let mut sealed = body[READY.len() + 8..].to_vec();
        open_in_place(
            &cipher,
            &short_nonce(b"CurveZMQREADY---", nonce),
            &mut sealed,
            "READY",
        )?;
        let metadata = Bytes::copy_from_slice(&sealed[TAG..]);
        Ok((metadata, Session::new(&key, self.sent, nonce, false)))
    }
}

/// [`CurveError::Refused`] if `body` is an ERROR command.
fn refused(body: &[u8]) -> Result<(), CurveError> {
    if !body.starts_with(ERROR) {
        return Ok(());
    }
    let reason = body
        .get(ERROR.len() + 1..)
        .map(|r| String::from_utf8_lossy(&r[..r.len().min(usize::from(body[ERROR.len()]))]))
        .unwrap_or_default();
    Err(CurveError::Refused(reason.into_owned()))
}
