"""10/FLP peers on libzmq, written from RFC 10 and the Guide's model 3.

usage: flp_peers.py server ENDPOINT
    A ROUTER bound to ENDPOINT with ENDPOINT as its identity: answers ["PING"] with ["PONG"] and
    [control, body...] with [control, body...] (an echo). Prints "ready" once bound.
usage: flp_peers.py client COUNT ENDPOINT...
    A ROUTER connected to every ENDPOINT; pings them, sends COUNT requests one after another,
    each to the first server that answered a ping, each with its own sequence number as the
    control frame, and prints "reply N" for each. Exits 1 if one does not arrive within 5 s.
"""
import sys
import time

import zmq

ctx = zmq.Context()

if sys.argv[1] == "server":
    endpoint = sys.argv[2]
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    # RFC 10: "Servers use durable sockets and MUST set an identity" (their public endpoint).
    sock.setsockopt(zmq.IDENTITY, endpoint.encode())
    sock.bind(endpoint)
    print("ready", flush=True)
    while True:
        msg = sock.recv_multipart()
        client, rest = msg[0], msg[1:]
        if rest == [b"PING"]:
            sock.send_multipart([client, b"PONG"])
        elif len(rest) >= 2:
            sock.send_multipart([client] + rest)

count, endpoints = int(sys.argv[2]), sys.argv[3:]
sock = ctx.socket(zmq.ROUTER)
sock.setsockopt(zmq.LINGER, 0)
# Routing to a server that is not connected yet fails loudly rather than dropping.
sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
for endpoint in endpoints:
    sock.connect(endpoint)
alive = []
deadline = time.monotonic() + 5
while not alive and time.monotonic() < deadline:
    for endpoint in endpoints:
        try:
            sock.send_multipart([endpoint.encode(), b"PING"])
        except zmq.ZMQError:
            pass  # not connected yet
    if sock.poll(100):
        server, *rest = sock.recv_multipart()
        if rest == [b"PONG"]:
            alive.append(server)
if not alive:
    print("no server answered a ping", file=sys.stderr)
    sys.exit(1)
for sequence in range(count):
    control = str(sequence + 1).encode()
    sock.send_multipart([alive[0], control, b"body %d" % sequence])
    deadline = time.monotonic() + 5
    while True:
        if not sock.poll(max(1, int((deadline - time.monotonic()) * 1000))):
            print("timeout", file=sys.stderr)
            sys.exit(1)
        server, *rest = sock.recv_multipart()
        if rest == [b"PONG"]:
            continue
        if rest[0] == control and rest[1:] == [b"body %d" % sequence]:
            print("reply %d" % sequence, flush=True)
            break
