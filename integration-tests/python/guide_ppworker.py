"""A Paranoid Pirate worker as the Guide's ppworker, on a libzmq DEALER socket, from 6/PPP.

usage: guide_ppworker.py ENDPOINT [INTERVAL_MS [LIVENESS]]

The Guide's loop, without its simulated crashes and overloads: a new DEALER socket sends READY
(0x01); then it polls for one heartbeat interval (INTERVAL_MS, default 1000) at a time. Any message
from the queue restores its liveness (LIVENESS, default 3, the Guide's); a request
[address, empty, body...] is echoed back as the reply. Each interval with nothing from the queue
costs one liveness; at zero the worker closes its socket, waits (1 s, doubling up to 32 s) and
starts again on a new socket with READY. A heartbeat (0x02) goes to the queue whenever an interval
has passed since the last one. Prints "ready" each time it sends READY.

Between a queue's restart and its own liveness running out, the worker stays on its socket, which
libzmq reconnects by itself: only its heartbeats reach the new queue.
"""
import sys
import time

import zmq

READY = b"\x01"
HEARTBEAT = b"\x02"
INTERVAL_INIT = 1.0
INTERVAL_MAX = 32.0

endpoint = sys.argv[1]
heartbeat_interval = (int(sys.argv[2]) if len(sys.argv) > 2 else 1000) / 1000.0
heartbeat_liveness = int(sys.argv[3]) if len(sys.argv) > 3 else 3

ctx = zmq.Context()


def worker_socket():
    """A new DEALER socket on the queue, READY sent."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    sock.send(READY)
    print("ready", flush=True)
    return sock


worker = worker_socket()
liveness = heartbeat_liveness
interval = INTERVAL_INIT
heartbeat_at = time.monotonic() + heartbeat_interval
while True:
    if worker.poll(int(heartbeat_interval * 1000)):
        frames = worker.recv_multipart()
        if len(frames) >= 3 and b"" in frames[1:-1]:
            # A request: [address..., empty, body...]; the reply goes back in the same envelope.
            worker.send_multipart(frames)
            liveness = heartbeat_liveness
        elif frames == [HEARTBEAT]:
            liveness = heartbeat_liveness
        else:
            print("E: invalid message %r" % frames, file=sys.stderr, flush=True)
        interval = INTERVAL_INIT
    else:
        liveness -= 1
        if liveness == 0:
            print("W: heartbeat failure, can't reach queue", file=sys.stderr, flush=True)
            print("W: reconnecting in %.0f ms" % (interval * 1000), file=sys.stderr, flush=True)
            time.sleep(interval)
            if interval < INTERVAL_MAX:
                interval *= 2
            worker.close()
            worker = worker_socket()
            liveness = heartbeat_liveness
    if time.monotonic() > heartbeat_at:
        heartbeat_at = time.monotonic() + heartbeat_interval
        worker.send(HEARTBEAT)
