"""A 7/MDP worker and client on libzmq DEALER sockets with ZMTP heartbeats on (ZMQ_HEARTBEAT_IVL,
ZMQ_HEARTBEAT_TIMEOUT): each sends a ZMTP PING every IVL_MS and drops its connection if nothing
comes back within TIMEOUT_MS.

usage: zmtp_heartbeat_peers.py ENDPOINT IVL_MS REQUESTS PAUSE_MS

The worker registers "hb", the client sends REQUESTS requests PAUSE_MS apart, each answered by
the worker. A socket monitor on both counts disconnections. Prints "ready" once the worker has
sent READY, then "done REPLIES DISCONNECTS" and exits 0.
"""
import sys
import time

import zmq
from zmq.utils.monitor import recv_monitor_message

endpoint, ivl_ms, requests, pause_ms = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
ctx = zmq.Context()


def dealer():
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.HEARTBEAT_IVL, ivl_ms)
    s.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3 * ivl_ms)
    monitor = s.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    s.connect(endpoint)
    return s, monitor


worker, worker_monitor = dealer()
client, client_monitor = dealer()
worker.send_multipart([b"", b"MDPW01", b"\x01", b"hb"])
print("ready", flush=True)

poller = zmq.Poller()
poller.register(worker, zmq.POLLIN)
poller.register(client, zmq.POLLIN)
replies = 0
for n in range(requests):
    body = b"ping %d" % n
    client.send_multipart([b"", b"MDPC01", b"hb", body])
    deadline = time.monotonic() + 5
    answered = False
    while not answered and time.monotonic() < deadline:
        events = dict(poller.poll(100))
        if worker in events:
            frames = worker.recv_multipart()
            if frames[2] == b"\x02":  # REQUEST: empty, MDPW01, 0x02, client, empty, body
                worker.send_multipart([b"", b"MDPW01", b"\x03", frames[3], b"", frames[5]])
        if client in events:
            frames = client.recv_multipart()
            answered = frames[-1] == body
            replies += answered
    time.sleep(pause_ms / 1000)

disconnects = 0
for monitor in (worker_monitor, client_monitor):
    while monitor.poll(0):
        recv_monitor_message(monitor)
        disconnects += 1
print("done %d %d" % (replies, disconnects), flush=True)
