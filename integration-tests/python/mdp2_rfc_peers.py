"""MDP v0.2 peers written from RFC 18 as it reads (no leading empty frame), on pyzmq DEALERs,
checking every frame the broker sends them byte for byte.

usage: mdp2_rfc_peers.py ENDPOINT

The worker registers "rfc-echo" and answers each request with two PARTIALs and a FINAL; the
client sends two requests and checks each PARTIAL and FINAL. Prints "done" and exits 0.
"""
import sys

import zmq

endpoint = sys.argv[1]
ctx = zmq.Context()


def dealer():
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, 5000)
    s.connect(endpoint)
    return s


def expect(socket, want):
    got = socket.recv_multipart()
    if got != want:
        raise SystemExit("expected %r, got %r" % (want, got))


worker = dealer()
client = dealer()
# "READY: Frame 0: MDPW02, Frame 1: 0x01, Frame 2: Service name"
worker.send_multipart([b"MDPW02", b"\x01", b"rfc-echo"])
for n in range(2):
    body = b"body %d" % n
    # "REQUEST: MDPC02, 0x01, Service name, Request body"
    client.send_multipart([b"MDPC02", b"\x01", b"rfc-echo", body])
    while True:
        frames = worker.recv_multipart()
        if frames[:2] != [b"MDPW02", b"\x05"]:  # skip the broker's HEARTBEATs
            break
    # "REQUEST: MDPW02, 0x02, Client address, Empty, Request body"
    if frames[:2] != [b"MDPW02", b"\x02"] or frames[3:] != [b"", body]:
        raise SystemExit("worker got %r" % frames)
    client_address = frames[2]
    worker.send_multipart([b"MDPW02", b"\x03", client_address, b"", b"first"])
    worker.send_multipart([b"MDPW02", b"\x03", client_address, b"", b"second"])
    worker.send_multipart([b"MDPW02", b"\x04", client_address, b"", body, b"end"])
    # "PARTIAL: MDPC02, 0x02, Service name, Reply body"; "FINAL: MDPC02, 0x03, ..."
    expect(client, [b"MDPC02", b"\x02", b"rfc-echo", b"first"])
    expect(client, [b"MDPC02", b"\x02", b"rfc-echo", b"second"])
    expect(client, [b"MDPC02", b"\x03", b"rfc-echo", body, b"end"])
# "DISCONNECT: MDPW02, 0x06"
worker.send_multipart([b"MDPW02", b"\x06"])
print("done", flush=True)
