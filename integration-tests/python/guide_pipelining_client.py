"""A 7/MDP client in the shape of the Guide's mdclient2 on mdcliapi2 (chapter 4), written from the
RFC and the Guide's description.

usage: guide_pipelining_client.py ENDPOINT SERVICE COUNT [TIMEOUT_MS]

One DEALER socket, no retries: sends COUNT requests without waiting (bodies "0" .. "COUNT-1"),
then receives replies one at a time, each within TIMEOUT_MS (2500 by default, as in the Guide),
stopping at the first receive that times out. Prints the number of valid replies received and
exits 0 only if all COUNT came, each a 7/MDP client REPLY for SERVICE answering a distinct
request.
"""
import sys

import zmq

MDPC = b"MDPC01"


def main():
    endpoint, service, count = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3])
    timeout_ms = int(sys.argv[4]) if len(sys.argv) > 4 else 2500

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)

    for i in range(count):
        # A DEALER emulates REQ: the empty delimiter frame is ours to add.
        sock.send_multipart([b"", MDPC, service, str(i).encode()])

    seen = bytearray(count)
    received = 0
    ok = True
    while received < count:
        if not sock.poll(timeout_ms):
            print("no reply within %d ms after %d replies" % (timeout_ms, received),
                  file=sys.stderr, flush=True)
            ok = False
            break
        reply = sock.recv_multipart()
        if len(reply) != 4 or reply[0] != b"" or reply[1] != MDPC or reply[2] != service:
            print("not a REPLY for %r: %r" % (service, reply[:4]), file=sys.stderr, flush=True)
            ok = False
            break
        try:
            n = int(reply[3])
        except ValueError:
            n = -1
        if not 0 <= n < count or seen[n]:
            print("reply answers no outstanding request: %r" % (reply[3],),
                  file=sys.stderr, flush=True)
            ok = False
            break
        seen[n] = 1
        received += 1

    print(received, flush=True)
    sock.close()
    ctx.term()
    return 0 if ok and received == count else 1


if __name__ == "__main__":
    sys.exit(main())
