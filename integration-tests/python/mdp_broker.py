"""A small 7/MDP broker on a libzmq ROUTER socket, written from the RFC, to test our client and
worker against a broker that is not ours.

usage: mdp_broker.py HEARTBEAT_MS
Binds tcp://127.0.0.1 on a random port and prints "endpoint tcp://127.0.0.1:PORT". Routes
requests by service to idle workers, oldest first; heartbeats workers; answers mmi.service.
Runs until killed.
"""
import collections
import sys
import time

import zmq

import curve_env

interval = int(sys.argv[1]) / 1000.0
C, W = b"MDPC01", b"MDPW01"
READY, REQUEST, REPLY, HEARTBEAT, DISCONNECT = b"\x01", b"\x02", b"\x03", b"\x04", b"\x05"

ctx = zmq.Context()
sock = ctx.socket(zmq.ROUTER)
sock.setsockopt(zmq.LINGER, 0)
curve_env.serve(sock)
port = sock.bind_to_random_port("tcp://127.0.0.1")
print("endpoint tcp://127.0.0.1:%d" % port, flush=True)

workers = {}  # identity -> [service, expiry]
idle = collections.defaultdict(collections.deque)  # service -> identities
queue = collections.defaultdict(collections.deque)  # service -> (client, body)


def dispatch(service):
    while idle[service] and queue[service]:
        worker = idle[service].popleft()
        client, body = queue[service].popleft()
        sock.send_multipart([worker, b"", W, REQUEST, client, b""] + body)


def drop(worker):
    service = workers.pop(worker)[0]
    if worker in idle[service]:
        idle[service].remove(worker)


next_heartbeat = time.monotonic() + interval
while True:
    if sock.poll(int(interval * 1000)):
        msg = sock.recv_multipart()
        sender, header = msg[0], msg[2]
        if header == C:
            service, body = msg[3], msg[4:]
            if service == b"mmi.service":
                found = any(w[0] == body[0] for w in workers.values())
                sock.send_multipart([sender, b"", C, service, b"200" if found else b"404"])
            else:
                queue[service].append((sender, body))
                dispatch(service)
        elif header == W:
            command = msg[3]
            if sender in workers:
                workers[sender][1] = time.monotonic() + 3 * interval
            if command == READY and sender not in workers:
                service = msg[4]
                workers[sender] = [service, time.monotonic() + 3 * interval]
                idle[service].append(sender)
                dispatch(service)
            elif command == REPLY and sender in workers:
                service = workers[sender][0]
                client, body = msg[4], msg[6:]
                sock.send_multipart([client, b"", C, service] + body)
                idle[service].append(sender)
                dispatch(service)
            elif command == HEARTBEAT and sender in workers:
                pass
            elif command == DISCONNECT:
                if sender in workers:
                    drop(sender)
            else:
                sock.send_multipart([sender, b"", W, DISCONNECT])
                if sender in workers:
                    drop(sender)
    now = time.monotonic()
    if now >= next_heartbeat:
        for worker, (service, expiry) in list(workers.items()):
            if expiry < now:
                drop(worker)
            else:
                sock.send_multipart([worker, b"", W, HEARTBEAT])
        next_heartbeat = now + interval
