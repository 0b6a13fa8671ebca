//! CurveZMQ against libzmq, byte for byte: handshakes and messages recorded with pyzmq, replayed.
//!
//! Each golden file holds what libzmq sent and what our side sent on one connection, with our
//! randomness drawn from a seeded generator. Replaying libzmq's bytes to our side with the same
//! seed must give exactly the bytes libzmq accepted, and open libzmq's messages to the frames it
//! sent. The files are made by the ignored `record_*` tests (`cargo test -p majordomo-zmtp --test
//! curve_golden -- --ignored`, with the project's Python environment from
//! `scripts/setup-interop.sh`); the keys are libzmq's own test keys.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use crypto_box::aead::rand_core::{CryptoRng, RngCore};
use majordomo_zmtp::curve::{
    encode_greeting, CurveClient, CurveKeyPair, CurveServer, MESSAGE_MORE,
};

/// libzmq's test keys (tests/testutil_security.cpp).
const SERVER_SECRET: &str = "JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6";
const CLIENT_SECRET: &str = "D:)Q[IlAW!ahhC2ac:9*A}h:p?([4%wOTJ%JR%cs";
const SEED: u64 = 0x5EED_C0DE;
const LONG: usize = 300;

/// SplitMix64: deterministic, for replays only.
struct Seeded(u64);

impl RngCore for Seeded {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }

    fn try_fill_bytes(
        &mut self,
        dest: &mut [u8],
    ) -> Result<(), crypto_box::aead::rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for Seeded {}

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

/// The bytes each side sent: `peer` (libzmq) and `ours`.
struct Transcript {
    peer: Vec<u8>,
    ours: Vec<u8>,
}

impl Transcript {
    fn read(name: &str) -> Transcript {
        let text = std::fs::read_to_string(golden(name)).expect("golden file");
        let field = |prefix: &str| {
            let line = text
                .lines()
                .find_map(|l| l.strip_prefix(prefix))
                .expect(prefix);
            hex_decode(line.trim())
        };
        Transcript {
            peer: field("libzmq "),
            ours: field("ours "),
        }
    }

    fn write(&self, name: &str, comment: &str) {
        let text = format!(
            "# {comment}\nlibzmq {}\nours {}\n",
            hex_encode(&self.peer),
            hex_encode(&self.ours)
        );
        std::fs::create_dir_all(golden("")).unwrap();
        std::fs::write(golden(name), text).unwrap();
    }
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

/// What one side sent (its bytes) and the frames it opened (flags and body).
type Replayed = (Vec<u8>, Vec<(u8, Vec<u8>)>);

/// Takes a greeting, then a frame: its flags and body.
fn take_frame(buf: &mut BytesMut) -> Option<(u8, BytesMut)> {
    let flags = *buf.first()?;
    let (header, size) = if flags & 0x02 == 0 {
        (2, usize::from(*buf.get(1)?))
    } else {
        let size: [u8; 8] = buf.get(1..9)?.try_into().ok()?;
        (9, u64::from_be_bytes(size) as usize)
    };
    if buf.len() < header + size {
        return None;
    }
    buf.advance(header);
    Some((flags, buf.split_to(size)))
}

/// Our server's half of a connection, fed the bytes `peer` has sent so far: what it sends in
/// answer and the frames it opens. Fed more, it sends the same and more.
fn serve(peer: &[u8]) -> Replayed {
    let keys = Arc::new(CurveKeyPair::from_secret_z85(SERVER_SECRET).unwrap());
    let mut rng = Seeded(SEED);
    let mut server = CurveServer::new(keys);
    let mut out = BytesMut::new();
    encode_greeting(&mut out, true);
    let mut frames = Vec::new();
    if peer.len() < 64 {
        return (out.to_vec(), frames);
    }
    let mut buf = BytesMut::from(&peer[64..]);
    let Some((_, hello)) = take_frame(&mut buf) else {
        return (out.to_vec(), frames);
    };
    server
        .hello(&mut rng, &hello, &mut out)
        .expect("HELLO opens");
    let Some((_, initiate)) = take_frame(&mut buf) else {
        return (out.to_vec(), frames);
    };
    let initiated = server.initiate(&initiate).expect("INITIATE opens");
    let client = CurveKeyPair::from_secret_z85(CLIENT_SECRET)
        .unwrap()
        .public();
    assert_eq!(initiated.client_key, client);
    let mut session = initiated.accept(b"\x0bSocket-Type\x00\x00\x00\x06ROUTER", &mut out);
    while let Some((_, mut message)) = take_frame(&mut buf) {
        let (flags, range) = session.open(&mut message).expect("MESSAGE opens");
        frames.push((flags, message[range].to_vec()));
    }
    if frames.len() == 2 {
        session.seal(MESSAGE_MORE, b"world", &mut out);
        session.seal(0, &[b'y'; LONG], &mut out);
    }
    (out.to_vec(), frames)
}

/// Our client's half of a connection, fed the bytes `peer` has sent so far: what it sends and
/// the frames it opens. Fed more, it sends the same and more.
fn call(peer: &[u8]) -> Replayed {
    let server = CurveKeyPair::from_secret_z85(SERVER_SECRET)
        .unwrap()
        .public();
    let keys = Arc::new(CurveKeyPair::from_secret_z85(CLIENT_SECRET).unwrap());
    let mut rng = Seeded(SEED);
    let mut client = CurveClient::new(&mut rng, server, keys);
    let mut out = BytesMut::new();
    encode_greeting(&mut out, false);
    client.hello(&mut out);
    let mut frames = Vec::new();
    if peer.len() < 64 {
        return (out.to_vec(), frames);
    }
    let mut buf = BytesMut::from(&peer[64..]);
    let Some((_, welcome)) = take_frame(&mut buf) else {
        return (out.to_vec(), frames);
    };
    let metadata = b"\x0bSocket-Type\x00\x00\x00\x06DEALER";
    client
        .welcome(&mut rng, &welcome, metadata, &mut out)
        .expect("WELCOME opens");
    let Some((_, ready)) = take_frame(&mut buf) else {
        return (out.to_vec(), frames);
    };
    let (_, mut session) = client.ready(&ready).expect("READY opens");
    session.seal(MESSAGE_MORE, b"hello", &mut out);
    session.seal(0, &[b'x'; LONG], &mut out);
    while let Some((_, mut message)) = take_frame(&mut buf) {
        let (flags, range) = session.open(&mut message).expect("MESSAGE opens");
        frames.push((flags, message[range].to_vec()));
    }
    (out.to_vec(), frames)
}

fn sent_by_peer() -> Vec<(u8, Vec<u8>)> {
    vec![(MESSAGE_MORE, b"hello".to_vec()), (0, vec![b'x'; LONG])]
}

#[test]
fn our_server_answers_a_libzmq_client_exactly_as_recorded() {
    let transcript = Transcript::read("curve_server.hex");
    let (ours, frames) = serve(&transcript.peer);
    assert_eq!(hex_encode(&ours), hex_encode(&transcript.ours));
    assert_eq!(frames, sent_by_peer());
}

#[test]
fn our_client_talks_to_a_libzmq_server_exactly_as_recorded() {
    let transcript = Transcript::read("curve_client.hex");
    let (ours, frames) = call(&transcript.peer);
    assert_eq!(hex_encode(&ours), hex_encode(&transcript.ours));
    // libzmq's ROUTER echoed our frames.
    assert_eq!(
        frames,
        vec![(MESSAGE_MORE, b"hello".to_vec()), (0, vec![b'x'; LONG])]
    );
}

#[test]
fn a_libzmq_handshake_altered_in_any_byte_of_hello_or_initiate_is_refused() {
    let transcript = Transcript::read("curve_server.hex");
    // HELLO: a 2-octet command header after the greeting, then 200 octets; INITIATE: a 9-octet
    // header (it is over 255 octets), then its body.
    let hello = 64 + 2..64 + 2 + 200;
    let initiate_len = u64::from_be_bytes(transcript.peer[267..275].try_into().unwrap()) as usize;
    let initiate = 275..275 + initiate_len;
    for at in hello.chain(initiate) {
        let mut peer = transcript.peer.clone();
        peer[at] ^= 0x01;
        let replayed = std::panic::catch_unwind(|| serve(&peer));
        assert!(replayed.is_err(), "altering byte {at} went unnoticed");
    }
}

// --- Recording -------------------------------------------------------------------------------

fn python() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python")
}

/// Runs a pyzmq peer given by `script` (with `{server_public}`, `{client_public}`,
/// `{client_secret}`, `{server_secret}` and `{endpoint}` filled in) against `side` on a TCP
/// connection, and records both directions. `side` is replayed on the peer's bytes as they
/// arrive; what it adds is sent.
async fn record(script: &str, we_listen: bool, side: fn(&[u8]) -> Replayed) -> Transcript {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = CurveKeyPair::from_secret_z85(SERVER_SECRET).unwrap();
    let client = CurveKeyPair::from_secret_z85(CLIENT_SECRET).unwrap();
    let fill = |script: &str, endpoint: &str| {
        script
            .replace("{server_public}", &server.public().to_z85())
            .replace("{server_secret}", &server.secret_z85())
            .replace("{client_public}", &client.public().to_z85())
            .replace("{client_secret}", &client.secret_z85())
            .replace("{endpoint}", endpoint)
    };
    let mut child;
    // The server's output, open until it has exited: it may print more.
    let mut _output = None;
    let mut stream = if we_listen {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("tcp://{}", listener.local_addr().unwrap());
        child = tokio::process::Command::new(python())
            .args(["-c", &fill(script, &endpoint)])
            .spawn()
            .unwrap();
        listener.accept().await.unwrap().0
    } else {
        // The server binds a port of its choosing and prints it (`{endpoint}` is the wildcard):
        // a port picked here and connected to before the server binds it could be given to
        // the connection as its own, which would then reach itself.
        use tokio::io::AsyncBufReadExt;
        child = tokio::process::Command::new(python())
            .args(["-c", &fill(script, "tcp://127.0.0.1:*")])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().expect("piped");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(std::time::Duration::from_secs(20), lines.next_line())
            .await
            .expect("the pyzmq server printed its endpoint in time")
            .unwrap()
            .expect("the pyzmq server printed its endpoint");
        let address = line
            .strip_prefix("tcp://")
            .expect("a tcp endpoint")
            .to_owned();
        _output = Some(lines);
        tokio::net::TcpStream::connect(address).await.unwrap()
    };
    // Our side's answers depend only on the peer's bytes: replay them as they grow, and send
    // whatever the replay adds.
    let mut peer = Vec::new();
    let mut sent = 0;
    let mut buf = [0u8; 4096];
    loop {
        let (ours, _) = side(&peer);
        if ours.len() > sent {
            stream.write_all(&ours[sent..]).await.unwrap();
            sent = ours.len();
        }
        let read =
            tokio::time::timeout(std::time::Duration::from_secs(3), stream.read(&mut buf)).await;
        match read {
            Ok(Ok(n)) if n > 0 => peer.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    let status = child.wait().await.unwrap();
    assert!(status.success(), "the pyzmq peer failed: {status}");
    let (ours, _) = side(&peer);
    Transcript { peer, ours }
}

#[tokio::test]
#[ignore = "records tests/golden/curve_server.hex with pyzmq"]
async fn record_a_libzmq_client_against_our_server() {
    let script = r#"
import zmq
s = zmq.Context().socket(zmq.DEALER)
s.linger = 0
s.curve_serverkey = b"{server_public}"
s.curve_publickey = b"{client_public}"
s.curve_secretkey = b"{client_secret}"
s.connect("{endpoint}")
s.send_multipart([b"hello", b"x" * 300])
assert s.poll(5000), "no reply"
assert s.recv_multipart() == [b"world", b"y" * 300]
print("libzmq client: reply checked")
"#;
    let transcript = record(script, true, serve).await;
    let (_, frames) = serve(&transcript.peer);
    assert_eq!(frames, sent_by_peer());
    transcript.write(
        "curve_server.hex",
        "A libzmq 4.3 (pyzmq) DEALER with CURVE against our server: what each side sent.",
    );
}

#[tokio::test]
#[ignore = "records tests/golden/curve_client.hex with pyzmq"]
async fn record_our_client_against_a_libzmq_server() {
    let script = r#"
import zmq
s = zmq.Context().socket(zmq.ROUTER)
s.linger = 0
s.curve_server = True
s.curve_secretkey = b"{server_secret}"
s.bind("{endpoint}")
print(s.last_endpoint.decode(), flush=True)
assert s.poll(10000), "no message"
msg = s.recv_multipart()
s.send_multipart(msg)
import time; time.sleep(0.5)
"#;
    let transcript = record(script, false, call).await;
    transcript.write(
        "curve_client.hex",
        "Our client against a libzmq 4.3 (pyzmq) ROUTER with CURVE that echoes: what each side sent.",
    );
}
