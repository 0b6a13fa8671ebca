"""A Titanic server (9/TSP) in the shape of the Guide's Python Titanic example (chapter 4,
titanic.py), written from 9/TSP and the Guide's description, as the anchor our Titanic is
measured against.

usage: guide_titanic.py ENDPOINT DIRECTORY [-v]

It reproduces the design choices of the Guide's example that set its speed:

* Three services handled by three threads, each a synchronous 7/MDP worker in the shape of the
  Guide's mdwrkapi (one DEALER socket, heartbeat 2500 ms, liveness 3, reconnect after 2500 ms):
  titanic.request, titanic.reply and titanic.close, one request at a time each.
* One file per message under DIRECTORY: UUID.req holds the request (service name, then the
  body) and UUID.rep the reply, each pickled list of frames written when it arrives.
  titanic.request writes the request file, hands the UUID to the dispatcher over an inproc
  pipe and answers 200 and the UUID (32 hexadecimal characters). titanic.reply answers 200 and
  the reply when its file exists, 300 while the request file does, and 400 otherwise.
  titanic.close deletes both files and answers 200. As in the Guide, no file is synced to
  disk (fsync): a write is in the operating system's cache when it is answered.
* A dispatcher in the main thread that waits on the pipe for up to one second, appends the
  UUID it receives to a queue file as a pending line ("-UUID"), then walks the whole queue
  file from the start (brute force) and, for each pending line, loads the request file, asks
  the broker's mmi.service whether the service is there, sends the request with a
  synchronous client in the shape of the Guide's mdcliapi (REQ socket; the dispatcher's client
  has the Guide's 1 s timeout and 1 retry), stores the reply and marks the line done ("+").
  So it dispatches one request per UUID received, or once a second when none arrives; a
  request whose file is gone (closed) counts as done.

Unlike the Guide's Python, which marks the queue line at the end of the file rather than the
line it processed, a line here is marked where it is; the Guide's own walk marks the right line
whenever each pass finds one pending request, the last, which is the case when it keeps up.
And titanic.reply answers 300 for a reply file it cannot read yet (the dispatcher is writing
it) rather than failing, and a UUID that is not 32 hexadecimal characters is unknown (400).

Prints "ready" once the three workers have sent READY. With -v, prints a line per dispatch.
Runs until killed.
"""
import os
import pickle
import sys
import threading
import time
import uuid as uuidlib

import zmq

MDPC, MDPW = b"MDPC01", b"MDPW01"
READY, REQUEST, REPLY, HEARTBEAT, DISCONNECT = b"\x01", b"\x02", b"\x03", b"\x04", b"\x05"
HEARTBEAT_S = 2.5
LIVENESS = 3
RECONNECT_S = 2.5
# The dispatcher's client: the Guide's titanic sets its mdcliapi session to 1 s and 1 retry.
CLIENT_TIMEOUT_MS = 1000
CLIENT_RETRIES = 1
# The dispatcher's wait on its pipe before a pass with nothing new, as in the Guide.
DISPATCH_IDLE_MS = 1000


class MdWorker:
    """A synchronous 7/MDP worker, mdwrkapi's shape: recv(reply) sends the previous reply and
    blocks until the next request, heartbeating while it waits."""

    def __init__(self, ctx, endpoint, service):
        self.ctx = ctx
        self.endpoint = endpoint
        self.service = service
        self.socket = None
        self.reply_to = None
        self.liveness = LIVENESS
        self.heartbeat_at = 0.0
        self.reconnect()

    def send(self, command, *frames):
        self.socket.send_multipart([b"", MDPW, command] + list(frames))

    def reconnect(self):
        if self.socket is not None:
            self.socket.close(linger=0)
        self.socket = self.ctx.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(self.endpoint)
        self.send(READY, self.service)
        self.liveness = LIVENESS
        self.heartbeat_at = time.monotonic() + HEARTBEAT_S

    def recv(self, reply):
        if reply is not None and self.reply_to is not None:
            self.send(REPLY, self.reply_to, b"", *reply)
        self.reply_to = None
        while True:
            if self.socket.poll(int(HEARTBEAT_S * 1000)):
                msg = self.socket.recv_multipart()
                self.liveness = LIVENESS
                if len(msg) >= 3 and msg[0] == b"" and msg[1] == MDPW:
                    command = msg[2]
                    if command == REQUEST and len(msg) >= 5 and msg[4] == b"":
                        self.reply_to = msg[3]
                        return msg[5:]
                    if command == DISCONNECT:
                        self.reconnect()
            else:
                self.liveness -= 1
                if self.liveness == 0:
                    time.sleep(RECONNECT_S)
                    self.reconnect()
            if time.monotonic() > self.heartbeat_at:
                self.send(HEARTBEAT)
                self.heartbeat_at = time.monotonic() + HEARTBEAT_S


class MdClient:
    """A synchronous 7/MDP client, mdcliapi's shape: a REQ socket, one request at a time, a
    fresh socket and a resend after each timeout until the retries are spent."""

    def __init__(self, ctx, endpoint, timeout_ms, retries):
        self.ctx = ctx
        self.endpoint = endpoint
        self.timeout_ms = timeout_ms
        self.retries = retries
        self.socket = None
        self.reconnect()

    def reconnect(self):
        if self.socket is not None:
            self.socket.close(linger=0)
        self.socket = self.ctx.socket(zmq.REQ)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(self.endpoint)

    def send(self, service, body):
        """The reply body, or None when every attempt timed out."""
        request = [MDPC, service] + list(body)
        for attempt in range(self.retries + 1):
            self.socket.send_multipart(request)
            if self.socket.poll(self.timeout_ms):
                msg = self.socket.recv_multipart()
                if len(msg) < 2 or msg[0] != MDPC or msg[1] != service:
                    raise RuntimeError("malformed reply %r" % (msg,))
                return msg[2:]
            self.reconnect()
        return None


class Store:
    """One file per message under a directory, pickled lists of frames."""

    def __init__(self, directory):
        self.directory = directory

    def request_path(self, uuid):
        return os.path.join(self.directory, uuid.decode() + ".req")

    def reply_path(self, uuid):
        return os.path.join(self.directory, uuid.decode() + ".rep")

    def queue_path(self):
        return os.path.join(self.directory, "queue")

    def ensure(self):
        os.makedirs(self.directory, exist_ok=True)

    @staticmethod
    def write(path, frames):
        with open(path, "wb") as f:
            pickle.dump(frames, f)

    @staticmethod
    def read(path):
        with open(path, "rb") as f:
            return pickle.load(f)


def is_uuid(frame):
    """Whether a frame is a UUID as 9/TSP formats it: 32 hexadecimal characters."""
    return len(frame) == 32 and all(c in b"0123456789abcdefABCDEF" for c in frame)


def request_service(ctx, endpoint, store, pipe_endpoint, ready):
    worker = MdWorker(ctx, endpoint, b"titanic.request")
    pipe = ctx.socket(zmq.PAIR)
    pipe.connect(pipe_endpoint)
    ready.release()
    reply = None
    while True:
        request = worker.recv(reply)
        if len(request) < 2:
            reply = [b"500"]
            continue
        store.ensure()
        uuid = uuidlib.uuid4().hex.encode()
        store.write(store.request_path(uuid), request)
        pipe.send(uuid)
        reply = [b"200", uuid]


def reply_service(ctx, endpoint, store, ready):
    worker = MdWorker(ctx, endpoint, b"titanic.reply")
    ready.release()
    reply = None
    while True:
        request = worker.recv(reply)
        if not request or not is_uuid(request[0]):
            reply = [b"400"]
            continue
        uuid = request[0]
        reply = None
        if os.path.exists(store.reply_path(uuid)):
            try:
                reply = [b"200"] + store.read(store.reply_path(uuid))
            except (EOFError, pickle.UnpicklingError, FileNotFoundError):
                # The dispatcher is still writing it (or a close removed it): not there yet.
                pass
        if reply is None:
            reply = [b"300"] if os.path.exists(store.request_path(uuid)) else [b"400"]


def close_service(ctx, endpoint, store, ready):
    worker = MdWorker(ctx, endpoint, b"titanic.close")
    ready.release()
    reply = None
    while True:
        request = worker.recv(reply)
        if request and is_uuid(request[0]):
            for path in (store.request_path(request[0]), store.reply_path(request[0])):
                try:
                    os.remove(path)
                except FileNotFoundError:
                    pass
        reply = [b"200"]


def dispatch(client, store, uuid):
    """Sends one stored request to its service; True when it is done (replied, or closed)."""
    try:
        request = store.read(store.request_path(uuid))
    except FileNotFoundError:
        return True
    service, body = request[0], request[1:]
    found = client.send(b"mmi.service", [service])
    if not found or found[0] != b"200":
        return False
    reply = client.send(service, body)
    if reply is None:
        return False
    store.write(store.reply_path(uuid), reply)
    return True


def main():
    endpoint, directory = sys.argv[1], sys.argv[2]
    verbose = "-v" in sys.argv[3:]
    ctx = zmq.Context()
    store = Store(directory)
    store.ensure()
    pipe = ctx.socket(zmq.PAIR)
    pipe_endpoint = "inproc://titanic-%d" % os.getpid()
    pipe.bind(pipe_endpoint)
    ready = threading.Semaphore(0)
    for target, extra in (
        (request_service, (pipe_endpoint, ready)),
        (reply_service, (ready,)),
        (close_service, (ready,)),
    ):
        thread = threading.Thread(target=target, args=(ctx, endpoint, store) + extra)
        thread.daemon = True
        thread.start()
    for _ in range(3):
        ready.acquire()
    print("ready", flush=True)
    client = MdClient(ctx, endpoint, CLIENT_TIMEOUT_MS, CLIENT_RETRIES)
    while True:
        store.ensure()
        if pipe.poll(DISPATCH_IDLE_MS):
            uuid = pipe.recv()
            with open(store.queue_path(), "ab") as f:
                f.write(b"-" + uuid + b"\n")
        if not os.path.exists(store.queue_path()):
            continue
        # The brute-force pass: every line of the queue, from the start, each time.
        with open(store.queue_path(), "r+b") as f:
            offset = 0
            for line in f.readlines():
                if line[:1] == b"-":
                    uuid = line[1:].rstrip()
                    if verbose:
                        print("processing %s" % uuid.decode(), flush=True)
                    if dispatch(client, store, uuid):
                        f.seek(offset)
                        f.write(b"+")
                offset += len(line)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
