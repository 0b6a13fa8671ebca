#!/usr/bin/env bash
# Creates .venv/ with pyzmq (which bundles libzmq) and majortomo (MDP v0.2 in Python) for the
# interop tests. Idempotent and quick when the environment is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYZMQ_VERSION=27.3.0
MAJORTOMO_VERSION=0.2.0
if [ -x .venv/bin/python ] && .venv/bin/python -c "import zmq, majortomo, sys; sys.exit(zmq.__version__ != '$PYZMQ_VERSION')" 2>/dev/null; then
    exit 0
fi
python3 -m venv .venv
# majortomo imports six without declaring it.
.venv/bin/python -m pip install --quiet --disable-pip-version-check "pyzmq==$PYZMQ_VERSION" "majortomo==$MAJORTOMO_VERSION" six
.venv/bin/python -c "import zmq; print('interop: pyzmq', zmq.__version__, 'libzmq', zmq.zmq_version())"
