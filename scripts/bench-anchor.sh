#!/usr/bin/env bash
# Runs `majordomo bench` with an anchor beside our broker: a 7/MDP broker in Python on libzmq
# (pyzmq; integration-tests/python/mdp_broker.py, written from the RFC, the shape of the Guide's
# Python broker), under the same load and with the same echo workers.
#
#   scripts/bench-anchor.sh [bench options...]      e.g. scripts/bench-anchor.sh --sizes 64
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-interop.sh
cargo build --release --locked -p majordomo-cli -p majordomo-tools
work=$(mktemp -d)
# The bench finds its fixtures' binary beside its own.
cp target/release/majordomo target/release/majordomo-bench-fixture "$work/"
.venv/bin/python integration-tests/python/mdp_broker.py 2500 >"$work/broker.out" &
broker=$!
trap 'kill $broker 2>/dev/null; rm -rf "$work"' EXIT
endpoint=""
for _ in $(seq 1 100); do
    endpoint=$(sed -n 's/^endpoint //p' "$work/broker.out")
    [ -n "$endpoint" ] && break
    sleep 0.1
done
[ -n "$endpoint" ] || { echo "the Python broker did not start" >&2; exit 1; }
"$work/majordomo" bench --external "$endpoint" --external-pid "$broker" "$@"
