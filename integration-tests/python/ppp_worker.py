"""A 6/PPP (Paranoid Pirate) worker on a libzmq DEALER socket, written from the RFC.

usage: ppp_worker.py ENDPOINT HEARTBEAT_MS
Sends READY (0x01), heartbeats (0x02) every HEARTBEAT_MS, answers each request
[address..., empty, body...] with the body prefixed by "py:". Prints "ready" after READY. Exits 1
after 3 silent intervals.
"""
import sys
import time

import zmq

endpoint, interval = sys.argv[1], int(sys.argv[2]) / 1000.0
ctx = zmq.Context()
sock = ctx.socket(zmq.DEALER)
sock.setsockopt(zmq.LINGER, 0)
sock.connect(endpoint)
sock.send(b"\x01")
print("ready", flush=True)
last_heard = time.monotonic()
next_heartbeat = time.monotonic() + interval
while True:
    if sock.poll(max(1, int((next_heartbeat - time.monotonic()) * 1000))):
        frames = sock.recv_multipart()
        last_heard = time.monotonic()
        if frames == [b"\x02"]:
            pass
        elif b"" in frames:
            at = frames.index(b"")
            sock.send_multipart(frames[: at + 1] + [b"py:" + f for f in frames[at + 1 :]])
        else:
            print("invalid message %r" % frames, file=sys.stderr)
    if time.monotonic() - last_heard > 3 * interval:
        print("queue silent", file=sys.stderr)
        sys.exit(1)
    if time.monotonic() >= next_heartbeat:
        sock.send(b"\x02")
        next_heartbeat = time.monotonic() + interval
