"""A stock 7/MDP worker on a libzmq DEALER socket, written from the RFC.

usage: mdp_dealer_worker.py ENDPOINT SERVICE HEARTBEAT_MS
Registers SERVICE, heartbeats every HEARTBEAT_MS, answers each REQUEST with the body frames
prefixed by "py:", and exits 0 after a DISCONNECT from the broker, or 1 after 3 silent intervals.
Prints "ready" once READY is sent.
"""
import sys
import time

import zmq

import curve_env

endpoint, service, interval = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3]) / 1000.0
W = b"MDPW01"
READY, REQUEST, REPLY, HEARTBEAT, DISCONNECT = b"\x01", b"\x02", b"\x03", b"\x04", b"\x05"

ctx = zmq.Context()
sock = ctx.socket(zmq.DEALER)
sock.setsockopt(zmq.LINGER, 1000)
curve_env.apply(sock)
sock.connect(endpoint)
sock.send_multipart([b"", W, READY, service])
print("ready", flush=True)

last_heard = time.monotonic()
next_heartbeat = time.monotonic() + interval
while True:
    timeout = max(0.0, next_heartbeat - time.monotonic())
    if sock.poll(int(timeout * 1000) + 1):
        msg = sock.recv_multipart()
        last_heard = time.monotonic()
        if len(msg) < 3 or msg[0] != b"" or msg[1] != W:
            print("invalid message %r" % msg, file=sys.stderr)
            continue
        command = msg[2]
        if command == REQUEST:
            # Frame 3: client address; frame 4: empty; frames 5+: body.
            client, body = msg[3], msg[5:]
            sock.send_multipart([b"", W, REPLY, client, b""] + [b"py:" + f for f in body])
            next_heartbeat = time.monotonic() + interval
        elif command == HEARTBEAT:
            pass
        elif command == DISCONNECT:
            print("disconnected", flush=True)
            sys.exit(0)
        else:
            print("unexpected command %r" % command, file=sys.stderr)
    if time.monotonic() - last_heard > 3 * interval:
        print("broker silent", file=sys.stderr)
        sys.exit(1)
    if time.monotonic() >= next_heartbeat:
        sock.send_multipart([b"", W, HEARTBEAT])
        next_heartbeat = time.monotonic() + interval
