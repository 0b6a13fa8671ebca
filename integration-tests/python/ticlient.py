"""The Guide's Titanic client (ticlient), written from 9/TSP on a stock 7/MDP REQ client.

usage: ticlient.py ENDPOINT SERVICE BODY

Sends BODY to SERVICE through titanic.request, polls titanic.reply every 100 ms while it
answers 300, prints "reply FRAME..." (frames joined by spaces), closes the request with
titanic.close and exits 0. Exits 1 on any other status, or when an answer does not arrive
within 5 s or the reply within 10 s.
"""
import sys
import time

import zmq

endpoint, service, body = sys.argv[1], sys.argv[2].encode(), sys.argv[3].encode()
ctx = zmq.Context()
sock = ctx.socket(zmq.REQ)
sock.setsockopt(zmq.LINGER, 0)
sock.connect(endpoint)


def call(tsp_service, *frames):
    sock.send_multipart([b"MDPC01", tsp_service] + list(frames))
    if not sock.poll(5000):
        sys.exit("no answer from %r" % tsp_service)
    reply = sock.recv_multipart()
    if reply[:2] != [b"MDPC01", tsp_service]:
        sys.exit("malformed answer %r" % reply)
    return reply[2:]


answer = call(b"titanic.request", service, body)
if answer[0][:3] != b"200" or len(answer) < 2 or len(answer[1]) != 32:
    sys.exit("request refused: %r" % answer)
uuid = answer[1]
deadline = time.time() + 10
while True:
    answer = call(b"titanic.reply", uuid)
    status = answer[0][:3]
    if status == b"200":
        print("reply " + " ".join(f.decode() for f in answer[1:]), flush=True)
        break
    if status != b"300" or time.time() > deadline:
        sys.exit("reply failed: %r" % answer)
    time.sleep(0.1)
answer = call(b"titanic.close", uuid)
if answer != [b"200"]:
    sys.exit("close failed: %r" % answer)
