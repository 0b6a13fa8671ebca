"""A 7/MDP client on one libzmq DEALER socket that tags each request with a frame of its own
(an extended reply envelope: [tag, empty, MDPC01, service, body]).

usage: mdp_tagged_client.py ENDPOINT SERVICE COUNT
Asks mmi.envelope first and prints its status; if 200, sends COUNT requests at once (body
"body-N", tag "tag-N"), reads COUNT replies in whatever order they come, checks that each
reply's tag is its request's and that every tag came back once, and prints "matched COUNT".
Exits 1 on a timeout (5 s without a reply) or a mismatch.
"""
import sys

import zmq

endpoint, service, count = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3])
ctx = zmq.Context()
sock = ctx.socket(zmq.DEALER)
sock.setsockopt(zmq.LINGER, 0)
sock.connect(endpoint)


def recv():
    if not sock.poll(5000):
        print("timeout", file=sys.stderr)
        sys.exit(1)
    return sock.recv_multipart()


sock.send_multipart([b"probe", b"", b"MDPC01", b"mmi.envelope", b""])
reply = recv()
if reply[:4] != [b"probe", b"", b"MDPC01", b"mmi.envelope"] or len(reply) != 5:
    print("malformed mmi.envelope reply %r" % reply, file=sys.stderr)
    sys.exit(1)
print(reply[4].decode(), flush=True)
if reply[4] != b"200":
    sys.exit(0)
for n in range(count):
    sock.send_multipart([b"tag-%d" % n, b"", b"MDPC01", service, b"body-%d" % n])
seen = set()
for _ in range(count):
    reply = recv()
    if len(reply) != 5 or reply[1:4] != [b"", b"MDPC01", service]:
        print("malformed reply %r" % reply, file=sys.stderr)
        sys.exit(1)
    tag, body = reply[0], reply[4]
    if tag.replace(b"tag-", b"") != body.replace(b"body-", b"") or tag in seen:
        print("reply %r under tag %r" % (body, tag), file=sys.stderr)
        sys.exit(1)
    seen.add(tag)
print("matched %d" % len(seen), flush=True)
