#!/usr/bin/env python3
"""Floods the release binary's servers on loopback and prints what they then hold.

Run with the interop environment's Python (pyzmq), after a release build:

    cargo build --release --locked -p majordomo-cli
    ./scripts/setup-interop.sh            # once: .venv/ with pyzmq
    .venv/bin/python scripts/measure-bounds.py [services|ppqueue|spqueue|titanic|frames|all]
    .venv/bin/python scripts/measure-bounds.py [idle-services|gathered-partials]
    .venv/bin/python scripts/measure-bounds.py \
        [stalled-frames|unread-replies|unread-partials|connect-cycles|guard] \
        [--broker-args=--guard-relay]

Each scenario starts its servers with their defaults (on free loopback ports), reads the
resident memory (VmRSS, and VmHWM for the peak) of the server from /proc before and after the
flood, and prints one row of a table. Sizes default to those of docs/OPERATIONS.md ("Memory
under floods"); the options make them smaller for a quick look.

- services: one DEALER sends one request to each of N distinct services nobody serves; then
  `majordomo status` (time), /metrics (size, time) and the broker's log lines are measured.
- idle-services: the same flood at the broker's defaults (requests expire after 10 s): RSS
  while the services sit in their idle grace (60 s), and after they are forgotten.
- gathered-partials: an 18/MDP worker answers a 7/MDP client with N PARTIALs of F empty
  frames each, which the broker gathers for that client up to an inbound message's limits;
  meanwhile `echo` is called back to back (every --probe-interval) and its latency kept.
- ppqueue, spqueue: N requests of SIZE bytes with no worker.
- titanic: N requests of SIZE bytes through `titanic.request` for S services nobody serves,
  with Titanic's defaults; its peak RSS while it dispatches them.
- frames: N requests of F empty frames each against N of one frame, queued in the broker, to
  measure what a frame costs beyond its payload; and N of one frame of LARGE bytes, to measure
  what a large frame costs beyond its payload.

The guard scenarios (`guard` runs the four; `all` does not) measure the ZMTP guard in front of
the broker's tcp:// endpoint, in its default mode (the front end, with its byte budgets) or as
--broker-args sets it: those options go to each of their brokers, e.g.
--broker-args=--guard-relay to compare (with the `=`, as the value begins with dashes). Their
peers are raw TCP sockets that speak ZMTP 3.0 themselves (NULL, as a DEALER).

- stalled-frames: N peers each announce a frame of 16,000,000 bytes and send 15 MiB of it, then
  nothing (the sockets stay open), sent without blocking so that one stalled send does not hold
  back the others. The broker runs with a short --guard-message-timeout (--stall-timeout).
  Measured: the broker's peak RSS, which peers the server closes and when, and the latency of
  an `echo` call through the broker every 0.5 s meanwhile.
- unread-replies: one client sends N requests of 15 MiB to `echo` (7/MDP) and never reads; the
  broker's peak RSS, whether the guard closed the client (rule `outbound`) and the replies it
  dropped. The client's socket has a small receive buffer: a libzmq DEALER would read every
  reply into its own queue (up to its RCVHWM in messages), and the broker would see a reader.
- unread-partials: an 18/MDP client sends one request of 1 MiB to a worker that streams N
  PARTIALs of it (`majordomo worker --mdp 0.2 echo --parts N`) and never reads.
- connect-cycles: N connect / ZMTP handshake / close cycles after a warm-up, paced under the
  guard's connection rate (--cycle-rate); the broker's RSS growth per cycle.
"""

import argparse
import json
import os
import selectors
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import deque

import zmq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 1024 * 1024


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


def rss_mib(pid):
    return proc_kib(pid, "VmRSS") / 1024


def peak_mib(pid):
    return proc_kib(pid, "VmHWM") / 1024


class Server:
    """A `majordomo` subcommand with its log in a scratch file."""

    def __init__(self, binary, args, scratch, name, env=None):
        self.log_path = os.path.join(scratch, name + ".log")
        self.log = open(self.log_path, "w")
        environment = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info"))
        environment.update(env or {})
        self.proc = subprocess.Popen(
            [binary] + args,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            env=environment,
        )

    @property
    def pid(self):
        return self.proc.pid

    def log_lines(self):
        self.log.flush()
        with open(self.log_path, errors="replace") as f:
            return sum(1 for _ in f)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def wait_until(what, check, patience=120.0):
    deadline = time.monotonic() + patience
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def mdp_request(ctx, endpoint, service, body, timeout_ms=5000):
    """One 7/MDP request on a fresh DEALER; the reply's frames after the service, or None."""
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(endpoint)
    try:
        dealer.send_multipart([b"", b"MDPC01", service] + body)
        if dealer.poll(timeout_ms):
            return dealer.recv_multipart()[3:]
        return None
    finally:
        dealer.close()


def mmi_stats(ctx, endpoint):
    reply = mdp_request(ctx, endpoint, b"mmi.stats", [b""], 2000)
    if reply and reply[0] == b"200":
        return json.loads(reply[1])
    return None


def metrics_page(address):
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=30) as response:
        return response.read().decode()


def sample(page, name):
    for line in page.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{}"):
            return float(line.split()[-1])
    return None


def wait_serving(ctx, endpoint):
    wait_until("the broker", lambda: mmi_stats(ctx, endpoint))


def row(table, scenario, values):
    table.append((scenario, values))
    print(f"{scenario}: " + ", ".join(f"{k} {v}" for k, v in values.items()), flush=True)


def flood_services(args, ctx, endpoint):
    """One request to each of args.services distinct services nobody serves, from one DEALER;
    returns the DEALER (to close) and the broker's stats once it has read them all."""
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(endpoint)
    for i in range(args.services):
        dealer.send_multipart([b"", b"MDPC01", b"svc%07d" % i, b"x"])
    stats = wait_until(
        "every request",
        lambda: (s := mmi_stats(ctx, endpoint)) and s["requests"] >= args.services and s,
        patience=600,
    )
    return dealer, stats


def services_broker(args, ctx, scratch, name, options):
    """A broker with `options` and a metrics listener, serving; returns it, its endpoint and
    its metrics address."""
    port, metrics = free_port(), f"127.0.0.1:{free_port()}"
    endpoint = f"tcp://127.0.0.1:{port}"
    broker = Server(
        args.binary, ["broker", "--bind", endpoint, "--metrics-listen", metrics] + options,
        scratch, name,
    )
    try:
        wait_serving(ctx, endpoint)
        metrics_page(metrics)
    except BaseException:
        broker.stop()
        raise
    return broker, endpoint, metrics


def services(args, ctx, scratch, table):
    broker, endpoint, metrics = services_broker(
        args, ctx, scratch, "broker-services", ["--request-expiry", "300s"]
    )
    try:
        baseline, lines_before = rss_mib(broker.pid), broker.log_lines()
        started = time.monotonic()
        dealer, stats = flood_services(args, ctx, endpoint)
        flood_s = time.monotonic() - started
        grown = rss_mib(broker.pid)
        started = time.monotonic()
        status = subprocess.run(
            [args.binary, "status", "--connect", endpoint],
            capture_output=True,
            timeout=60,
        )
        status_s = time.monotonic() - started
        started = time.monotonic()
        page = metrics_page(metrics)
        metrics_s = time.monotonic() - started
        counted = (stats["queued_bytes"] + stats["service_bytes"]) / MIB
        row(
            table,
            f"broker, {args.services} services",
            {
                "RSS MiB": f"{baseline:.1f} -> {grown:.1f}",
                "counted MiB": f"{counted:.1f}",
                "known": stats["services"],
                "rejected": stats["rejected"],
                "flood s": f"{flood_s:.1f}",
                "status": f"exit {status.returncode} in {status_s * 1000:.0f} ms",
                "/metrics": f"{len(page)} B in {metrics_s * 1000:.0f} ms",
                "log lines": broker.log_lines() - lines_before,
            },
        )
        dealer.close()
    finally:
        broker.stop()


def idle_services(args, ctx, scratch, table):
    """Services whose requests expired, sitting in their idle grace, at the broker's defaults."""
    broker, endpoint, metrics = services_broker(args, ctx, scratch, "broker-idle-services", [])
    try:
        baseline, lines_before = rss_mib(broker.pid), broker.log_lines()
        started = time.monotonic()
        dealer, flood = flood_services(args, ctx, endpoint)
        flooded = rss_mib(broker.pid)
        # Every request expires, then every service sits in its grace; then it is forgotten.
        idle = wait_until(
            "every request expired",
            lambda: (s := mmi_stats(ctx, endpoint)) and s["queued"] == 0 and s,
            patience=600,
        )
        idle_at, in_grace = time.monotonic() - started, rss_mib(broker.pid)
        in_grace_status = time.monotonic()
        status = subprocess.run(
            [args.binary, "status", "--connect", endpoint], capture_output=True, timeout=60
        )
        status_s = time.monotonic() - in_grace_status
        forgotten = wait_until(
            "every idle service forgotten",
            lambda: (s := mmi_stats(ctx, endpoint)) and s["services"] <= 1 and s,
            patience=600,
        )
        forgotten_at = time.monotonic() - started
        row(
            table,
            f"broker, {args.services} services idle in their grace",
            {
                "RSS MiB": f"{baseline:.1f} -> {flooded:.1f} flooded -> {in_grace:.1f} "
                f"in the grace -> {rss_mib(broker.pid):.1f} forgotten",
                "peak MiB": f"{peak_mib(broker.pid):.1f}",
                "known": f"{flood['services']} flooded, {idle['services']} idle, "
                f"{forgotten['services']} after",
                "idle at s": f"{idle_at:.0f}",
                "forgotten at s": f"{forgotten_at:.0f}",
                "status in the grace": f"exit {status.returncode} in {status_s * 1000:.0f} ms",
                "/metrics after": f"{len(metrics_page(metrics))} B",
                "log lines": broker.log_lines() - lines_before,
            },
        )
        dealer.close()
    finally:
        broker.stop()


def queue(args, ctx, scratch, table, kind):
    front, back = free_port(), free_port()
    metrics = f"127.0.0.1:{free_port()}"
    server = Server(
        args.binary,
        [
            kind,
            "--frontend",
            f"tcp://127.0.0.1:{front}",
            "--backend",
            f"tcp://127.0.0.1:{back}",
            "--metrics-listen",
            metrics,
            "--request-expiry",
            "300s",
        ],
        scratch,
        kind,
    )
    try:
        wait_until("the queue", lambda: _try(lambda: metrics_page(metrics)))
        baseline = rss_mib(server.pid)
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(f"tcp://127.0.0.1:{front}")
        body = b"\x07" * args.size
        for _ in range(args.requests):
            dealer.send_multipart([b"", body])
        page = wait_until(
            "every request",
            lambda: (p := metrics_page(metrics))
            and (sample(p, "majordomo_requests_total") or 0) >= args.requests
            and p,
            patience=600,
        )
        grown = rss_mib(server.pid)
        queued = sample(page, "majordomo_queued")
        queued_bytes = sample(page, "majordomo_queued_bytes") / MIB
        row(
            table,
            f"{kind}, {args.requests} x {args.size / MIB:g} MiB",
            {
                "RSS MiB": f"{baseline:.1f} -> {grown:.1f} (+{grown - baseline:.0f})",
                "queued": int(queued),
                "counted MiB": f"{queued_bytes:.0f}",
                "rejected": int(sample(page, "majordomo_rejected_total") or 0),
                "peak MiB": f"{peak_mib(server.pid):.0f}",
            },
        )
        dealer.close()
    finally:
        server.stop()


def _try(f):
    try:
        return f()
    except OSError:
        return None


def titanic(args, ctx, scratch, table):
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    broker = Server(args.binary, ["broker", "--bind", endpoint], scratch, "broker-titanic")
    store = os.path.join(scratch, "titanic.redb")
    env = {}
    if args.mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    server = None
    try:
        wait_serving(ctx, endpoint)
        server = Server(
            args.binary,
            ["titanic", "--connect", endpoint, "--store", store],
            scratch,
            "titanic",
            env,
        )
        wait_until(
            "titanic.request",
            lambda: mdp_request(ctx, endpoint, b"mmi.service", [b"titanic.request"])
            == [b"200"],
        )
        baseline = rss_mib(server.pid)
        body = b"\x5a" * args.size
        # Submitted four at a time, as four clients would.
        dealers = []
        for _ in range(4):
            d = ctx.socket(zmq.DEALER)
            d.setsockopt(zmq.LINGER, 0)
            d.connect(endpoint)
            dealers.append(d)
        started = time.monotonic()
        sent = accepted = 0
        pending = {}
        peak = baseline
        while accepted < args.requests:
            for d in dealers:
                if d not in pending.values() and sent < args.requests:
                    service = b"nobody-%d" % (sent % args.titanic_services)
                    d.send_multipart([b"", b"MDPC01", b"titanic.request", service, body])
                    pending[sent] = d
                    sent += 1
            for n, d in list(pending.items()):
                if d.poll(10):
                    reply = d.recv_multipart()
                    if reply[3] != b"200":
                        raise RuntimeError(f"titanic.request answered {reply[3:]}")
                    accepted += 1
                    del pending[n]
            peak = max(peak, rss_mib(server.pid))
        submit_s = time.monotonic() - started
        # While they are dispatched (the broker expires them after 10 s, Titanic retries).
        deadline = time.monotonic() + args.dispatch_seconds
        while time.monotonic() < deadline:
            peak = max(peak, rss_mib(server.pid))
            time.sleep(0.1)
        hwm = peak_mib(server.pid)
        row(
            table,
            f"titanic, {args.requests} x {args.size / MIB:g} MiB over {args.titanic_services} services"
            + (f", MALLOC_MMAP_THRESHOLD_={args.mmap_threshold}" if args.mmap_threshold else ""),
            {
                "RSS MiB": f"{baseline:.1f} at start",
                "peak MiB (VmHWM)": f"{hwm:.0f}",
                "after MiB": f"{rss_mib(server.pid):.0f}",
                "submit s": f"{submit_s:.1f}",
                "broker peak MiB": f"{peak_mib(broker.pid):.0f}",
            },
        )
        for d in dealers:
            d.close()
    finally:
        if server:
            server.stop()
        broker.stop()


def frames(args, ctx, scratch, table):
    """Queued requests in the broker: what one more frame, and a large frame, cost."""

    def held(label, make, count):
        port = free_port()
        endpoint = f"tcp://127.0.0.1:{port}"
        broker = Server(
            args.binary,
            ["broker", "--bind", endpoint, "--request-expiry", "300s", "--max-queued-bytes", "8GiB",
             "--max-queued-bytes-per-service", "8GiB"],
            scratch,
            "broker-frames",
        )
        try:
            wait_serving(ctx, endpoint)
            baseline = rss_mib(broker.pid)
            dealer = ctx.socket(zmq.DEALER)
            dealer.setsockopt(zmq.LINGER, 0)
            dealer.connect(endpoint)
            for _ in range(count):
                dealer.send_multipart([b"", b"MDPC01", b"nobody"] + make())
            stats = wait_until(
                "every request",
                lambda: (s := mmi_stats(ctx, endpoint)) and s["requests"] >= count and s,
                patience=600,
            )
            grown = rss_mib(broker.pid) - baseline
            dealer.close()
            return grown * MIB / count, stats["queued_bytes"] / count
        finally:
            broker.stop()

    n, f = args.frame_requests, args.frames
    one, one_counted = held("one", lambda: [b"x"], n)
    many, many_counted = held("many", lambda: [b"x"] + [b""] * (f - 1), n)
    per_frame = (many - one) / (f - 1)
    row(
        table,
        f"broker, {n} requests of 1 and of {f} frames",
        {
            "RSS per request B": f"{one:.0f} and {many:.0f}",
            "counted B": f"{one_counted:.0f} and {many_counted:.0f}",
            "per further frame B": f"{per_frame:.0f}",
        },
    )
    large = args.large
    count = args.large_requests
    big, big_counted = held("large", lambda: [b"\x07" * large], count)
    row(
        table,
        f"broker, {count} requests of one {large} B frame",
        {
            "RSS per request B": f"{big:.0f}",
            "beyond the payload B": f"{big - large:.0f}",
            "counted B": f"{big_counted:.0f}",
        },
    )


GUARD = ["stalled-frames", "unread-replies", "unread-partials", "connect-cycles"]


# The guard scenarios: raw ZMTP 3.0 peers (37/ZMTP), NULL mechanism, as a DEALER.

ZMTP_GREETING = (
    b"\xff" + b"\x00" * 8 + b"\x7f"  # signature
    + b"\x03\x00"  # version 3.0
    + b"NULL".ljust(20, b"\x00")  # mechanism
    + b"\x00"  # as-server
    + b"\x00" * 31  # filler
)
MORE, LONG, COMMAND = 0x01, 0x02, 0x04


def zmtp_frame_header(size, more=False, command=False):
    flags = (MORE if more else 0) | (COMMAND if command else 0)
    if size > 255:
        return bytes([flags | LONG]) + size.to_bytes(8, "big")
    return bytes([flags, size])


def zmtp_frame(body, more=False, command=False):
    return zmtp_frame_header(len(body), more, command) + body


def zmtp_ready(socket_type):
    name = b"Socket-Type"
    properties = bytes([len(name)]) + name + len(socket_type).to_bytes(4, "big") + socket_type
    return zmtp_frame(b"\x05READY" + properties, command=True)


def recv_exactly(sock, n):
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed by the server")
        data += chunk
    return bytes(data)


def zmtp_connect(port, rcvbuf=0, timeout=10.0):
    """A TCP connection through the NULL handshake as a DEALER: greetings, then READY both ways."""
    sock = socket.socket()
    try:
        if rcvbuf:
            # Before connect, so that the window is small from the start: a peer that does not
            # read then pushes back after a few dozen KiB rather than a few MiB.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(timeout)
        sock.connect(("127.0.0.1", port))
        sock.sendall(ZMTP_GREETING)
        greeting = recv_exactly(sock, 64)
        if greeting[0] != 0xFF or greeting[9] != 0x7F or greeting[10] != 3:
            raise RuntimeError(f"not a ZMTP 3 greeting: {greeting[:12].hex()}")
        if greeting[12:32].rstrip(b"\x00") != b"NULL":
            raise RuntimeError(f"mechanism {greeting[12:32]!r}")
        sock.sendall(zmtp_ready(b"DEALER"))
        flags = recv_exactly(sock, 1)[0]
        size = int.from_bytes(recv_exactly(sock, 8 if flags & LONG else 1), "big")
        body = recv_exactly(sock, size)
        if not flags & COMMAND or body[:6] != b"\x05READY":
            raise RuntimeError(f"expected READY, got {body[:16]!r}")
    except BaseException:
        sock.close()
        raise
    return sock


class Outgoing:
    """Bytes queued for a non-blocking socket, written as fast as the server reads them."""

    def __init__(self, sock):
        sock.setblocking(False)
        self.sock, self.chunks, self.sent = sock, deque(), 0

    def push(self, data):
        self.chunks.append(memoryview(data))

    def pending(self):
        return bool(self.chunks)

    def write(self):
        """Writes what the socket takes now; False once the server has closed the connection."""
        while self.chunks:
            chunk = self.chunks[0]
            try:
                n = self.sock.send(chunk[:MIB])
            except BlockingIOError:
                return True
            except (BrokenPipeError, ConnectionResetError):
                return False
            self.sent += n
            if n == len(chunk):
                self.chunks.popleft()
            else:
                self.chunks[0] = chunk[n:]
        return True


def closed_by_server(sock):
    """Reads and discards what a non-blocking socket has; True once the server has closed it."""
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except (ConnectionResetError, BrokenPipeError):
        return True


def sample_sum(page, name, **labels):
    """The sum of the series of `name` whose labels include `labels` (every series without)."""
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    total = None
    for line in page.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            series = line.rsplit(" ", 1)[0]
            if all(w in series for w in wanted):
                total = (total or 0) + float(line.split()[-1])
    return total


def counters(page):
    """The broker's and its guard's counters the guard scenarios report."""
    return {
        "requests": int(sample(page, "majordomo_requests_total") or 0),
        "replies": int(sample(page, "majordomo_replies_total") or 0),
        "rejected": int(sample(page, "majordomo_rejected_total") or 0),
        "lost replies": int(sample(page, "majordomo_lost_replies_total") or 0),
        "undeliverable": int(sample(page, "majordomo_undeliverable_total") or 0),
        "guard dropped": int(sample(page, "majordomo_guard_dropped_total") or 0),
        "refused outbound": int(
            sample_sum(page, "majordomo_guard_refused_total", rule="outbound") or 0
        ),
        "refused message_timeout": int(
            sample_sum(page, "majordomo_guard_refused_total", rule="message_timeout") or 0
        ),
        "refused rate": int(sample_sum(page, "majordomo_guard_refused_total", rule="rate") or 0),
        "refused all": int(sample_sum(page, "majordomo_guard_refused_total") or 0),
        "accepted": int(sample(page, "majordomo_guard_connections_total") or 0),
        "open": int(sample(page, "majordomo_guard_open_connections") or 0),
    }


def mode(args):
    return args.broker_args or "front end (defaults)"


def guard_broker(args, scratch, name, options=()):
    """A broker on a free tcp:// port with /metrics, with `options` and then --broker-args."""
    port, metrics = free_port(), f"127.0.0.1:{free_port()}"
    endpoint = f"tcp://127.0.0.1:{port}"
    broker = Server(
        args.binary,
        ["broker", "--bind", endpoint, "--metrics-listen", metrics]
        + list(options)
        + shlex.split(args.broker_args),
        scratch,
        name,
    )
    return broker, port, endpoint, metrics


def start_worker(args, ctx, endpoint, scratch, name, options):
    worker = Server(args.binary, ["worker", "--connect", endpoint] + options, scratch, name)
    try:
        wait_until(
            "the echo worker",
            lambda: mdp_request(ctx, endpoint, b"mmi.service", [b"echo"]) == [b"200"],
        )
    except BaseException:
        worker.stop()
        raise
    return worker


class EchoProbe(threading.Thread):
    """Calls `echo` through the broker every `interval` seconds, one call at a time on one
    DEALER, waiting as long as it takes; keeps each call's latency."""

    def __init__(self, ctx, endpoint, interval=0.5):
        super().__init__(daemon=True)
        self.ctx, self.endpoint, self.interval = ctx, endpoint, interval
        self.latencies, self.waiting_since = [], None
        self.stopping = threading.Event()

    def run(self):
        dealer = self.ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(self.endpoint)
        try:
            seq = 0
            while not self.stopping.is_set():
                seq += 1
                body = b"probe %d" % seq
                started = self.waiting_since = time.monotonic()
                dealer.send_multipart([b"", b"MDPC01", b"echo", body])
                while not self.stopping.is_set():
                    if dealer.poll(50) and dealer.recv_multipart()[3:] == [body]:
                        self.latencies.append(time.monotonic() - started)
                        self.waiting_since = None
                        break
                self.stopping.wait(max(0.0, started + self.interval - time.monotonic()))
        finally:
            dealer.close()

    def stop(self):
        """Stops it; how long the call in flight, if any, had waited by then."""
        self.stopping.set()
        since = self.waiting_since
        self.join()
        return time.monotonic() - since if since is not None else None

    def summary(self, unanswered):
        lat = sorted(self.latencies)
        if not lat:
            text = "no call answered"
        else:
            slow = [x for x in lat if x > 1.0]
            p99 = lat[min(len(lat) - 1, len(lat) * 99 // 100)]
            text = (
                f"{len(lat)} calls, median {lat[len(lat) // 2] * 1000:.1f} ms, "
                f"p99 {p99 * 1000:.1f} ms, max {lat[-1] * 1000:.1f} ms, "
                f"{len(slow)} over 1 s ({sum(slow):.1f} s)"
            )
        if unanswered is not None:
            text += f", one unanswered after {unanswered:.1f} s"
        return text


def stalled_frames(args, ctx, scratch, table):
    options = []
    if args.stall_timeout and "--guard-message-timeout" not in args.broker_args:
        options = ["--guard-message-timeout", args.stall_timeout]
    broker, port, endpoint, metrics = guard_broker(args, scratch, "broker-stalled", options)
    worker = probe = None
    peers = []
    try:
        wait_serving(ctx, endpoint)
        worker = start_worker(args, ctx, endpoint, scratch, "worker-stalled", ["echo"])
        baseline = rss_mib(broker.pid)
        for _ in range(args.stalled):
            peers.append(Outgoing(zmtp_connect(port)))
        connected = rss_mib(broker.pid)
        header = zmtp_frame_header(args.stall_frame)
        body = bytes(args.stall_bytes)
        selector = selectors.DefaultSelector()
        for n, peer in enumerate(peers):
            peer.push(header)
            peer.push(body)
            selector.register(peer.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, n)
        closed_at = {}
        probe = EchoProbe(ctx, endpoint)
        probe.start()
        started = time.monotonic()
        peak = connected
        deadline = started + args.stall_seconds
        # Until the deadline even once every peer is closed: the echo calls held up meanwhile
        # are to be answered.
        while time.monotonic() < deadline:
            if len(closed_at) < len(peers):
                ready = selector.select(0.1)
            else:
                ready = []
                time.sleep(0.1)
            for key, events in ready:
                n, peer = key.data, peers[key.data]
                gone = False
                if events & selectors.EVENT_READ:
                    gone = closed_by_server(peer.sock)
                if not gone and events & selectors.EVENT_WRITE:
                    gone = not peer.write()
                    if not gone and not peer.pending():
                        selector.modify(peer.sock, selectors.EVENT_READ, n)
                if gone:
                    closed_at[n] = time.monotonic() - started
                    selector.unregister(peer.sock)
            peak = max(peak, rss_mib(broker.pid))
        watched = time.monotonic() - started
        unanswered = probe.stop()
        page = metrics_page(metrics)
        hwm = peak_mib(broker.pid)
        sent = sum(max(0, p.sent - len(header)) for p in peers)
        for peer in peers:
            peer.sock.close()
        selector.close()
        # What the broker keeps once every stalled peer is gone.
        time.sleep(2)
        final = rss_mib(broker.pid)
        times = sorted(closed_at.values())
        when = (
            f"first {times[0]:.1f} s, median {times[len(times) // 2]:.1f} s, last {times[-1]:.1f} s"
            if times
            else "-"
        )
        c = counters(page)
        row(
            table,
            f"stalled-frames, {args.stalled} peers x {args.stall_bytes / MIB:g} MiB of a "
            f"{args.stall_frame} B frame, message timeout {args.stall_timeout or 'default'}, "
            f"{mode(args)}",
            {
                "RSS MiB": f"{baseline:.1f} -> {connected:.1f} connected -> peak {peak:.0f} "
                f"(VmHWM {hwm:.0f}) -> {final:.0f} after",
                "sent MiB": f"{sent / MIB:.0f} of {args.stalled * args.stall_bytes / MIB:.0f}",
                "closed by the server": f"{len(closed_at)} of {len(peers)} in {watched:.0f} s",
                "closed at": when,
                "refused message_timeout": c["refused message_timeout"],
                "refused all rules": c["refused all"],
                "workers purged": int(sample(page, "majordomo_purged_workers_total") or 0),
                "echo every 0.5 s": probe.summary(unanswered),
            },
        )
    finally:
        if probe and probe.is_alive():
            probe.stop()
        for peer in peers:
            peer.sock.close()
        if worker:
            worker.stop()
        broker.stop()


def watch_unread(args, broker, metrics, client, out, patience, done=lambda: True):
    """Writes `out` as the broker takes it and samples the broker's RSS until it has all gone
    (or the server closed the client), `done()` holds, and the broker's counters have not moved
    for --quiet-seconds; or until `patience` passes. The peak RSS, when the client was closed
    (seconds, by a failed write) or None, the last /metrics page, and how long it took."""
    started = time.monotonic()
    peak, closed_at = rss_mib(broker.pid), None
    last, quiet_since, next_page = None, started, started
    page = metrics_page(metrics)
    writable = selectors.DefaultSelector()
    writable.register(client, selectors.EVENT_WRITE)
    while time.monotonic() - started < patience:
        if closed_at is None and out.pending():
            writable.select(0.1)
            if not out.write():
                closed_at = time.monotonic() - started
        else:
            time.sleep(0.1)
        peak = max(peak, rss_mib(broker.pid))
        now = time.monotonic()
        if now >= next_page:
            next_page = now + 0.5
            page = metrics_page(metrics)
            state = counters(page)
            state.pop("open")
            if state != last:
                last, quiet_since = state, now
            elif (
                now - quiet_since >= args.quiet_seconds
                and (closed_at is not None or not out.pending())
                and done()
            ):
                break
    writable.close()
    return peak, closed_at, page, time.monotonic() - started


def unread_replies(args, ctx, scratch, table):
    broker, port, endpoint, metrics = guard_broker(args, scratch, "broker-unread")
    worker = client = None
    try:
        wait_serving(ctx, endpoint)
        worker = start_worker(args, ctx, endpoint, scratch, "worker-unread", ["echo"])
        baseline = rss_mib(broker.pid)
        client = zmtp_connect(port, rcvbuf=64 * 1024)
        out = Outgoing(client)
        body = bytes(args.unread_size)
        prefix = (
            zmtp_frame(b"", more=True)
            + zmtp_frame(b"MDPC01", more=True)
            + zmtp_frame(b"echo", more=True)
            + zmtp_frame_header(len(body))
        )
        for _ in range(args.unread_requests):
            out.push(prefix)
            out.push(body)
        peak, closed_at, page, took = watch_unread(
            args, broker, metrics, client, out, args.unread_seconds
        )
        hwm = peak_mib(broker.pid)
        client.close()
        client = None
        time.sleep(2)
        final = rss_mib(broker.pid)
        c = counters(page)
        written = out.sent / (len(prefix) + len(body))
        row(
            table,
            f"unread-replies, {args.unread_requests} x {args.unread_size / MIB:g} MiB to echo, "
            f"never read, {mode(args)}",
            {
                "RSS MiB": f"{baseline:.1f} -> peak {peak:.0f} (VmHWM {hwm:.0f}) -> "
                f"{final:.0f} after",
                "requests written": f"{written:.1f}",
                "client closed": (
                    f"write failed at {closed_at:.1f} s"
                    if closed_at is not None
                    else "no write failed"
                ),
                "refused outbound": c["refused outbound"],
                "guard dropped": c["guard dropped"],
                "broker undeliverable": c["undeliverable"],
                "broker requests/replies/rejected/lost": f"{c['requests']}/{c['replies']}/"
                f"{c['rejected']}/{c['lost replies']}",
                "watched s": f"{took:.0f}",
            },
        )
    finally:
        if client:
            client.close()
        if worker:
            worker.stop()
        broker.stop()


def unread_partials(args, ctx, scratch, table):
    broker, port, endpoint, metrics = guard_broker(args, scratch, "broker-partials")
    worker_metrics = f"127.0.0.1:{free_port()}"
    worker = client = None
    try:
        wait_serving(ctx, endpoint)
        worker = start_worker(
            args,
            ctx,
            endpoint,
            scratch,
            "worker-partials",
            ["--mdp", "0.2", "--metrics-listen", worker_metrics]
            + ["echo", "--parts", str(args.partials)],
        )

        def streamed():
            """Whether the worker's handler has sent every PARTIAL and the FINAL."""
            page = metrics_page(worker_metrics)
            return (sample_sum(page, "majordomo_worker_requests_total") or 0) >= 1

        baseline = rss_mib(broker.pid)
        client = zmtp_connect(port, rcvbuf=64 * 1024)
        out = Outgoing(client)
        # 18/MDP REQUEST as RFC 18 writes it: [MDPC02, 0x01, service, body].
        out.push(
            zmtp_frame(b"MDPC02", more=True)
            + zmtp_frame(b"\x01", more=True)
            + zmtp_frame(b"echo", more=True)
            + zmtp_frame(bytes(args.partial_size))
        )
        peak, closed_at, page, took = watch_unread(
            args, broker, metrics, client, out, args.unread_seconds, streamed
        )
        hwm = peak_mib(broker.pid)
        finished = streamed()
        client.close()
        client = None
        time.sleep(2)
        final = rss_mib(broker.pid)
        c = counters(page)
        row(
            table,
            f"unread-partials, {args.partials} PARTIALs of {args.partial_size / MIB:g} MiB "
            f"(18/MDP), never read, {mode(args)}",
            {
                "RSS MiB": f"{baseline:.1f} -> peak {peak:.0f} (VmHWM {hwm:.0f}) -> "
                f"{final:.0f} after",
                "worker streamed MiB": f"{args.partials * args.partial_size / MIB:.0f}"
                + ("" if finished else " (not finished)"),
                "refused outbound": c["refused outbound"],
                "guard dropped": c["guard dropped"],
                "broker undeliverable": c["undeliverable"],
                "broker requests/replies/lost": f"{c['requests']}/{c['replies']}/"
                f"{c['lost replies']}",
                "watched s": f"{took:.0f}",
            },
        )
    finally:
        if client:
            client.close()
        if worker:
            worker.stop()
        broker.stop()


def gathered_partials(args, ctx, scratch, table):
    """A v0.2 worker answers a v0.1 client with PARTIALs of many empty frames, which the broker
    gathers for it, while `echo` is called back to back on its own service."""
    broker, endpoint, metrics = services_broker(args, ctx, scratch, "broker-gathered", [])
    echo = flood = client = probe = None
    try:
        echo = start_worker(args, ctx, endpoint, scratch, "worker-echo", ["echo"])
        flood = ctx.socket(zmq.DEALER)
        flood.setsockopt(zmq.LINGER, 0)
        flood.setsockopt(zmq.SNDHWM, 0)
        flood.connect(endpoint)
        # 18/MDP worker, as RFC 18 writes it: READY [MDPW02, 0x01, service]; REQUEST [MDPW02,
        # 0x02, client, empty, body...]; PARTIAL [MDPW02, 0x03, client, empty, body...].
        flood.send_multipart([b"MDPW02", b"\x01", b"flood"])
        wait_until(
            "the flood worker",
            lambda: mdp_request(ctx, endpoint, b"mmi.service", [b"flood"]) == [b"200"],
        )
        baseline = rss_mib(broker.pid)
        probe = EchoProbe(ctx, endpoint, interval=args.probe_interval)
        probe.start()
        client = ctx.socket(zmq.DEALER)
        client.setsockopt(zmq.LINGER, 0)
        client.connect(endpoint)
        client.send_multipart([b"", b"MDPC01", b"flood", b"go"])
        # The broker may heartbeat the worker first: [MDPW02, 0x05].
        request = flood.recv_multipart()
        while request[1] != b"\x02":
            request = flood.recv_multipart()
        reply_to = request[2]
        body = [b""] * args.partial_frames
        started = time.monotonic()
        for _ in range(args.gathered_partials):
            flood.send_multipart([b"MDPW02", b"\x03", reply_to, b""] + body)
        flood.send_multipart([b"MDPW02", b"\x04", reply_to, b"", b"end"])
        stats = wait_until(
            "the flood answered",
            lambda: (s := mmi_stats(ctx, endpoint)) and s["idle_workers"] >= 2 and s,
            patience=600,
        )
        took = time.monotonic() - started
        unanswered = probe.stop()
        got = client.poll(0)
        row(
            table,
            f"{args.gathered_partials} PARTIALs of {args.partial_frames} empty frames for a "
            "v0.1 client",
            {
                "RSS MiB": f"{baseline:.1f} -> peak {peak_mib(broker.pid):.1f} -> "
                f"{rss_mib(broker.pid):.1f}",
                "abandoned": stats["abandoned"],
                "client got a reply": bool(got),
                "streamed s": f"{took:.1f}",
                "echo": probe.summary(unanswered),
            },
        )
    finally:
        if probe and probe.is_alive():
            probe.stop()
        for sock in (client, flood):
            if sock is not None:
                sock.close()
        if echo:
            echo.stop()
        broker.stop()


def connect_cycles(args, ctx, scratch, table):
    broker, port, endpoint, metrics = guard_broker(args, scratch, "broker-cycles")
    try:
        wait_serving(ctx, endpoint)

        def cycles(n):
            """n connections, each through the handshake and closed, at most --cycle-rate a
            second (never in a burst to catch up); how many failed."""
            interval, next_at, failed = 1.0 / args.cycle_rate, time.monotonic(), 0
            for _ in range(n):
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                next_at = max(next_at, time.monotonic()) + interval
                try:
                    zmtp_connect(port).close()
                except (OSError, RuntimeError):
                    failed += 1
            return failed

        def settled():
            wait_until(
                "the guard to close every connection",
                lambda: counters(metrics_page(metrics))["open"] == 0,
            )
            time.sleep(2)

        cycles(args.warmup_cycles)
        settled()
        before_page = metrics_page(metrics)
        before = rss_mib(broker.pid)
        started = time.monotonic()
        failed = cycles(args.cycles)
        took = time.monotonic() - started
        settled()
        after = rss_mib(broker.pid)
        c0, c = counters(before_page), counters(metrics_page(metrics))
        row(
            table,
            f"connect-cycles, {args.cycles} after {args.warmup_cycles} to warm up, "
            f"{mode(args)}",
            {
                "RSS MiB": f"{before:.2f} -> {after:.2f}",
                "per cycle B": f"{(after - before) * MIB / args.cycles:.1f}",
                "cycles/s": f"{args.cycles / took:.0f} (paced to {args.cycle_rate:g})",
                "failed": failed,
                "accepted": c["accepted"] - c0["accepted"],
                "refused": f"{c['refused all'] - c0['refused all']} "
                f"(rate {c['refused rate'] - c0['refused rate']})",
                "peak MiB (VmHWM)": f"{peak_mib(broker.pid):.0f}",
            },
        )
    finally:
        broker.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "scenarios",
        nargs="*",
        default=["all"],
        choices=["services", "idle-services", "ppqueue", "spqueue", "titanic", "frames",
                 "gathered-partials", "all"]
        + GUARD
        + ["guard"],
    )
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    parser.add_argument("--binary", default=os.path.join(target, "release/majordomo"))
    parser.add_argument("--services", type=int, default=200_000)
    parser.add_argument("--requests", type=int, default=3000, help="ppqueue requests")
    parser.add_argument("--sp-requests", type=int, default=1000, help="spqueue requests")
    parser.add_argument("--size", type=int, default=MIB, help="queue request body")
    parser.add_argument("--titanic-requests", type=int, default=60)
    parser.add_argument("--titanic-size", type=int, default=15 * MIB)
    parser.add_argument("--titanic-services", type=int, default=30)
    parser.add_argument("--dispatch-seconds", type=float, default=20.0)
    parser.add_argument("--mmap-threshold", type=int, default=0,
                        help="MALLOC_MMAP_THRESHOLD_ for Titanic (0: Titanic's own, 4 MiB)")
    parser.add_argument("--frame-requests", type=int, default=20_000)
    parser.add_argument("--gathered-partials", type=int, default=10_000,
                        help="gathered-partials PARTIALs")
    parser.add_argument("--partial-frames", type=int, default=1000,
                        help="empty frames in each of them")
    parser.add_argument("--probe-interval", type=float, default=0.01,
                        help="gathered-partials: seconds between echo calls")
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--large", type=int, default=256 * 1024)
    parser.add_argument("--large-requests", type=int, default=1000)
    parser.add_argument("--broker-args", default="",
                        help="options for the brokers of the guard scenarios, e.g. "
                        "--broker-args=--guard-relay")
    parser.add_argument("--stalled", type=int, default=400, help="stalled-frames peers")
    parser.add_argument("--stall-frame", type=int, default=16_000_000,
                        help="the frame size they announce")
    parser.add_argument("--stall-bytes", type=int, default=15 * MIB, help="what they send of it")
    parser.add_argument("--stall-timeout", default="10s",
                        help="--guard-message-timeout for stalled-frames ('': the broker's)")
    parser.add_argument("--stall-seconds", type=float, default=40.0,
                        help="how long stalled-frames watches")
    parser.add_argument("--unread-requests", type=int, default=200)
    parser.add_argument("--unread-size", type=int, default=15 * MIB)
    parser.add_argument("--partials", type=int, default=3000, help="unread-partials PARTIALs")
    parser.add_argument("--partial-size", type=int, default=MIB)
    parser.add_argument("--unread-seconds", type=float, default=300.0,
                        help="most unread-replies and unread-partials watch")
    parser.add_argument("--quiet-seconds", type=float, default=3.0,
                        help="counters still this long: the broker is done")
    parser.add_argument("--cycles", type=int, default=30_000, help="connect-cycles cycles")
    parser.add_argument("--warmup-cycles", type=int, default=1000)
    parser.add_argument("--cycle-rate", type=float, default=900.0,
                        help="cycles per second, under the guard's 1,000 per address")
    args = parser.parse_args()
    if not os.path.exists(args.binary):
        sys.exit(f"{args.binary} is missing: cargo build --release --locked -p majordomo-cli")
    wanted = set(args.scenarios)
    if "all" in wanted:
        wanted = {"services", "ppqueue", "spqueue", "titanic", "frames"}
    if "guard" in wanted:
        wanted |= set(GUARD)
    ctx = zmq.Context()
    scratch = tempfile.mkdtemp(prefix="measure-bounds-")
    table = []
    try:
        if "services" in wanted:
            services(args, ctx, scratch, table)
        if "idle-services" in wanted:
            idle_services(args, ctx, scratch, table)
        if "ppqueue" in wanted:
            queue(args, ctx, scratch, table, "ppqueue")
        if "spqueue" in wanted:
            sp = argparse.Namespace(**vars(args))
            sp.requests = args.sp_requests
            queue(sp, ctx, scratch, table, "spqueue")
        if "titanic" in wanted:
            t = argparse.Namespace(**vars(args))
            t.requests, t.size = args.titanic_requests, args.titanic_size
            titanic(t, ctx, scratch, table)
        if "frames" in wanted:
            frames(args, ctx, scratch, table)
        if "gathered-partials" in wanted:
            gathered_partials(args, ctx, scratch, table)
        if "stalled-frames" in wanted:
            stalled_frames(args, ctx, scratch, table)
        if "unread-replies" in wanted:
            unread_replies(args, ctx, scratch, table)
        if "unread-partials" in wanted:
            unread_partials(args, ctx, scratch, table)
        if "connect-cycles" in wanted:
            connect_cycles(args, ctx, scratch, table)
    finally:
        ctx.destroy(linger=0)
        shutil.rmtree(scratch, ignore_errors=True)
    print()
    for scenario, values in table:
        print(f"| {scenario} | " + " | ".join(f"{k}: {v}" for k, v in values.items()) + " |")


if __name__ == "__main__":
    main()
