"""A plain libzmq REP echo server for the Lazy Pirate interop test.

usage: rep_server.py
Binds tcp://127.0.0.1 on a random port, prints "endpoint tcp://127.0.0.1:PORT", and echoes every
request with "py:" in front of the first frame until killed.
"""
import zmq

ctx = zmq.Context()
sock = ctx.socket(zmq.REP)
sock.setsockopt(zmq.LINGER, 0)
port = sock.bind_to_random_port("tcp://127.0.0.1")
print("endpoint tcp://127.0.0.1:%d" % port, flush=True)
while True:
    frames = sock.recv_multipart()
    sock.send_multipart([b"py:" + frames[0]] + frames[1:])
