"""A stock 7/MDP client on a libzmq REQ socket, written from the RFC.

usage: mdp_req_client.py ENDPOINT SERVICE BODY [BODY ...]
Sends one REQUEST per BODY (sequentially) and prints each reply's frames as a JSON list of
strings, one line per reply. Exits 1 if a reply does not arrive within 5 s or is malformed.
"""
import json
import sys

import zmq

import curve_env

endpoint, service, bodies = sys.argv[1], sys.argv[2].encode(), sys.argv[3:]
ctx = zmq.Context()
sock = ctx.socket(zmq.REQ)
sock.setsockopt(zmq.LINGER, 0)
curve_env.apply(sock)
sock.connect(endpoint)
for body in bodies:
    # The REQ socket adds the empty frame 0 itself.
    sock.send_multipart([b"MDPC01", service, body.encode()])
    if not sock.poll(5000):
        print("timeout", file=sys.stderr)
        sys.exit(1)
    reply = sock.recv_multipart()
    if len(reply) < 3 or reply[0] != b"MDPC01" or reply[1] != service:
        print("malformed reply %r" % reply, file=sys.stderr)
        sys.exit(1)
    print(json.dumps([f.decode() for f in reply[2:]]), flush=True)
