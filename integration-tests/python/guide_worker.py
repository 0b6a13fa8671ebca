"""A 7/MDP worker in the shape of the Guide's mdwrkapi (chapter 4), written from the RFC and the
Guide's description of that API.

usage: guide_worker.py ENDPOINT SERVICE HEARTBEAT_MS DELAY_MS [RECONNECT_MS]

One DEALER socket and one thread. The worker sends READY, then waits for requests, sending a
HEARTBEAT whenever a heartbeat interval has passed while it waits. A request is handled in line:
the handler sleeps DELAY_MS and echoes the body, and while it runs the worker sends nothing and
reads nothing (as mdwrkapi, whose caller runs the handler between two calls to mdwrk_recv).

Like mdwrkapi, it starts a new session on a new socket when the broker sends DISCONNECT (at
once) or when it has heard nothing from the broker for 3 heartbeat intervals of waiting (after
RECONNECT_MS, 2500 by default as in the Guide).

Prints "ready" each time READY is sent and "handled N" when the handler of the Nth request has
finished (before its REPLY is sent). On SIGTERM it sends DISCONNECT and exits 0.
"""
import signal
import sys
import time

import zmq

MDPW = b"MDPW01"
READY, REQUEST, REPLY, HEARTBEAT, DISCONNECT = b"\x01", b"\x02", b"\x03", b"\x04", b"\x05"
LIVENESS = 3


class Terminated(Exception):
    pass


def on_sigterm(_signum, _frame):
    raise Terminated()


class GuideWorker:
    def __init__(self, endpoint, service, heartbeat_s, reconnect_s):
        self.ctx = zmq.Context()
        self.endpoint = endpoint
        self.service = service
        self.heartbeat_s = heartbeat_s
        self.reconnect_s = reconnect_s
        self.socket = None
        self.liveness = LIVENESS
        self.heartbeat_at = 0.0
        self.reply_to = None

    def send(self, command, *frames):
        self.socket.send_multipart([b"", MDPW, command] + list(frames))

    def connect(self):
        """A fresh socket and a fresh session: the broker forgets the old socket's identity."""
        if self.socket is not None:
            self.socket.close(linger=0)
        self.socket = self.ctx.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(self.endpoint)
        self.send(READY, self.service)
        print("ready", flush=True)
        self.liveness = LIVENESS
        self.heartbeat_at = time.monotonic() + self.heartbeat_s
        self.reply_to = None

    def recv(self, reply):
        """Sends `reply` to the request last returned, if any, and returns the next request's
        body. Heartbeats flow only while this waits."""
        if reply is not None and self.reply_to is not None:
            self.send(REPLY, self.reply_to, b"", *reply)
        self.reply_to = None
        while True:
            if self.socket.poll(int(self.heartbeat_s * 1000)):
                msg = self.socket.recv_multipart()
                self.liveness = LIVENESS
                if len(msg) < 3 or msg[0] != b"" or msg[1] != MDPW:
                    print("invalid message %r" % (msg,), file=sys.stderr, flush=True)
                elif msg[2] == REQUEST:
                    if len(msg) < 5 or msg[4] != b"":
                        print("invalid REQUEST %r" % (msg,), file=sys.stderr, flush=True)
                    else:
                        self.reply_to = msg[3]
                        return msg[5:]
                elif msg[2] == HEARTBEAT:
                    pass
                elif msg[2] == DISCONNECT:
                    print("broker sent DISCONNECT", file=sys.stderr, flush=True)
                    self.connect()
                else:
                    print("unexpected command %r" % (msg[2],), file=sys.stderr, flush=True)
            else:
                self.liveness -= 1
                if self.liveness == 0:
                    print("broker silent, reconnecting", file=sys.stderr, flush=True)
                    time.sleep(self.reconnect_s)
                    self.connect()
            if time.monotonic() > self.heartbeat_at:
                self.send(HEARTBEAT)
                self.heartbeat_at = time.monotonic() + self.heartbeat_s

    def close(self):
        if self.socket is not None:
            try:
                self.send(DISCONNECT)
            except zmq.ZMQError:
                pass
            self.socket.close(linger=500)
        self.ctx.term()


def main():
    endpoint, service = sys.argv[1], sys.argv[2].encode()
    heartbeat_s = int(sys.argv[3]) / 1000.0
    delay_s = int(sys.argv[4]) / 1000.0
    reconnect_s = int(sys.argv[5]) / 1000.0 if len(sys.argv) > 5 else 2.5
    signal.signal(signal.SIGTERM, on_sigterm)
    worker = GuideWorker(endpoint, service, heartbeat_s, reconnect_s)
    handled = 0
    try:
        worker.connect()
        reply = None
        while True:
            request = worker.recv(reply)
            time.sleep(delay_s)
            reply = request
            handled += 1
            print("handled %d" % handled, flush=True)
    except (Terminated, KeyboardInterrupt):
        pass
    finally:
        worker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
