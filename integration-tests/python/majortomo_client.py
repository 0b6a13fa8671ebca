"""majortomo 0.2.0's own Client (its dialect of MDP v0.2) against a broker and worker of ours.

usage: majortomo_client.py ENDPOINT SERVICE REQUESTS PARTIALS

Sends REQUESTS requests of two frames to SERVICE, one after another, and expects each reply as
PARTIALS partial replies ("part N") then the request's frames as the FINAL. Prints
"done REQUESTS" and exits 0; any mismatch or a reply later than 5 s raises (exit 1).
"""
import sys

from majortomo.client import Client

endpoint, service = sys.argv[1], sys.argv[2].encode()
requests, partials = int(sys.argv[3]), int(sys.argv[4])
client = Client(endpoint)
client.connect()
for i in range(requests):
    body = [b"request %d" % i, b"second frame"]
    client.send(service, *body)
    parts = list(client.recv_all(timeout=5))
    expected = [[b"part %d" % n] for n in range(partials)] + [body]
    if parts != expected:
        raise SystemExit("request %d: got %r" % (i, parts))
client.close()
print("done %d" % requests, flush=True)
