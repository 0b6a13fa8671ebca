#!/usr/bin/env python3
"""Floods the release binary's servers on loopback and prints what they then hold.

Run with the interop environment's Python (pyzmq), after a release build:

    cargo build --release --locked -p majordomo-cli
    ./scripts/setup-interop.sh            # once: .venv/ with pyzmq
    .venv/bin/python scripts/measure-bounds.py [services|ppqueue|spqueue|titanic|frames|all]

Each scenario starts its servers with their defaults (on free loopback ports), reads the
resident memory (VmRSS, and VmHWM for the peak) of the server from /proc before and after the
flood, and prints one row of a table. Sizes default to those of docs/OPERATIONS.md ("Memory
under floods"); the options make them smaller for a quick look.

- services: one DEALER sends one request to each of N distinct services nobody serves; then
  `majordomo status` (time), /metrics (size, time) and the broker's log lines are measured.
- ppqueue, spqueue: N requests of SIZE bytes with no worker.
- titanic: N requests of SIZE bytes through `titanic.request` for S services nobody serves,
  with Titanic's defaults; its peak RSS while it dispatches them.
- frames: N requests of F empty frames each against N of one frame, queued in the broker, to
  measure what a frame costs beyond its payload; and N of one frame of LARGE bytes, to measure
  what a large frame costs beyond its payload.
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

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


def services(args, ctx, scratch, table):
    port, metrics = free_port(), f"127.0.0.1:{free_port()}"
    endpoint = f"tcp://127.0.0.1:{port}"
    broker = Server(
        args.binary,
        ["broker", "--bind", endpoint, "--metrics-listen", metrics, "--request-expiry", "300s"],
        scratch,
        "broker-services",
    )
    try:
        wait_serving(ctx, endpoint)
        metrics_page(metrics)
        baseline, lines_before = rss_mib(broker.pid), broker.log_lines()
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(endpoint)
        started = time.monotonic()
        for i in range(args.services):
            dealer.send_multipart([b"", b"MDPC01", b"svc%07d" % i, b"x"])
        stats = wait_until(
            "every request",
            lambda: (s := mmi_stats(ctx, endpoint)) and s["requests"] >= args.services and s,
            patience=600,
        )
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "scenarios",
        nargs="*",
        default=["all"],
        choices=["services", "ppqueue", "spqueue", "titanic", "frames", "all"],
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
                        help="MALLOC_MMAP_THRESHOLD_ for Titanic (0: glibc's default)")
    parser.add_argument("--frame-requests", type=int, default=20_000)
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--large", type=int, default=256 * 1024)
    parser.add_argument("--large-requests", type=int, default=1000)
    args = parser.parse_args()
    if not os.path.exists(args.binary):
        sys.exit(f"{args.binary} is missing: cargo build --release --locked -p majordomo-cli")
    wanted = set(args.scenarios)
    if "all" in wanted:
        wanted = {"services", "ppqueue", "spqueue", "titanic", "frames"}
    ctx = zmq.Context()
    scratch = tempfile.mkdtemp(prefix="measure-bounds-")
    table = []
    try:
        if "services" in wanted:
            services(args, ctx, scratch, table)
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
    finally:
        ctx.destroy(linger=0)
        shutil.rmtree(scratch, ignore_errors=True)
    print()
    for scenario, values in table:
        print(f"| {scenario} | " + " | ".join(f"{k}: {v}" for k, v in values.items()) + " |")


if __name__ == "__main__":
    main()
