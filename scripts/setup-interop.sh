#!/usr/bin/env bash
# Sets up what the tests need beyond the Rust toolchain. Idempotent and quick when it is all
# there already.
#
# - .venv/ with pyzmq (which bundles libzmq) and majortomo (MDP v0.2 in Python), for the interop
#   tests.
# - .tools/bin/promtool, Prometheus's checker, for the tests of deploy/prometheus/ and of the
#   /metrics page: taken from Debian's prometheus package, downloaded into .tools/cache/ (no root
#   needed while the package lists are there; `apt-get update`, which needs root, only when the
#   download fails without them).
# - tmux, installed with apt-get when it is missing (this needs root).
set -euo pipefail
cd "$(dirname "$0")/.."
PYZMQ_VERSION=27.3.0
MAJORTOMO_VERSION=0.2.0

# --- Python peers for the interop tests ---
if ! { [ -x .venv/bin/python ] && .venv/bin/python -c "import zmq, majortomo, sys; sys.exit(zmq.__version__ != '$PYZMQ_VERSION')" 2>/dev/null; }; then
    python3 -m venv .venv
    # majortomo imports six without declaring it.
    .venv/bin/python -m pip install --quiet --disable-pip-version-check "pyzmq==$PYZMQ_VERSION" "majortomo==$MAJORTOMO_VERSION" six
    .venv/bin/python -c "import zmq; print('interop: pyzmq', zmq.__version__, 'libzmq', zmq.zmq_version())"
fi

# --- promtool, from Debian's prometheus package, without installing the package ---
PROMTOOL=.tools/bin/promtool
if ! { [ -x "$PROMTOOL" ] && "$PROMTOOL" --version >/dev/null 2>&1; }; then
    mkdir -p .tools/cache .tools/bin
    deb=$(ls -t .tools/cache/prometheus_*.deb 2>/dev/null | head -n 1 || true)
    if [ -z "$deb" ]; then
        # As root, apt would hand the download to its _apt user, who cannot write here.
        sandbox=()
        if [ "$(id -u)" -eq 0 ]; then
            sandbox=(-o APT::Sandbox::User=root)
        fi
        # apt-get download saves into the current directory; it fails when the package lists
        # were never fetched (a fresh machine), and only then are they fetched.
        if ! (cd .tools/cache && apt-get download -q "${sandbox[@]}" prometheus); then
            echo "setup: fetching the package lists (apt-get update) to download prometheus" >&2
            apt-get update -q
            (cd .tools/cache && apt-get download -q "${sandbox[@]}" prometheus)
        fi
        deb=$(ls -t .tools/cache/prometheus_*.deb | head -n 1)
    fi
    unpacked=$(mktemp -d)
    trap 'rm -rf "$unpacked"' EXIT
    # Only the one binary: the package's file system as a tar stream, one member taken from it.
    if ! dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$unpacked" ./usr/bin/promtool; then
        rm -f "$deb" # damaged: the next run downloads it again
        echo "setup: no promtool in $deb" >&2
        exit 1
    fi
    install -m 0755 "$unpacked/usr/bin/promtool" "$PROMTOOL"
    echo "setup: $("$PROMTOOL" --version 2>&1 | head -n 1) at $PROMTOOL"
fi

# --- tmux ---
if ! command -v tmux >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: tmux is missing and installing it needs root: apt-get install tmux" >&2
        exit 1
    fi
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q tmux; then
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q tmux
    fi
fi
