"""majortomo 0.2.0's own Worker and Client (its dialect of MDP v0.2) against a broker.

usage: majortomo_peers.py ENDPOINT REQUESTS PARTIALS

A worker thread serves "mt-echo": for each request it sends PARTIALS partial replies ("part N")
then the request's frames as the FINAL. The client sends REQUESTS requests of two frames and
checks every part of every reply. Prints "ready" once the worker is connected, then
"done REQUESTS" and exits 0; any mismatch raises (exit 1). With REQUESTS 0 there is no client:
the worker serves until the process is killed.
"""
import sys
import threading
import time

from majortomo.client import Client
from majortomo.worker import Worker

endpoint, requests, partials = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])


def serve(worker, stop):
    while not stop.is_set():
        try:
            client, frames = worker.wait_for_request()
        except Exception:
            return
        for n in range(partials):
            worker.send_reply_partial(client, [b"part %d" % n])
        worker.send_reply_final(client, frames)


worker = Worker(endpoint, "mt-echo", heartbeat_interval=0.5)
worker.connect()
stop = threading.Event()
thread = threading.Thread(target=serve, args=(worker, stop), daemon=True)
thread.start()
print("ready", flush=True)
if requests == 0:
    thread.join()
time.sleep(0.2)

client = Client(endpoint)
client.connect()
for i in range(requests):
    body = [b"request %d" % i, b"second frame"]
    client.send(b"mt-echo", *body)
    parts = list(client.recv_all(timeout=5))
    expected = [[b"part %d" % n] for n in range(partials)] + [body]
    if parts != expected:
        raise SystemExit("request %d: got %r" % (i, parts))
client.close()
print("done %d" % requests, flush=True)
stop.set()
