#!/usr/bin/env bash
# Profiles the broker process while `majordomo bench` loads it, and prints where its CPU time
# goes, grouped by component (kernel, zmq.rs, tokio, futures, bytes, allocator and libc, our
# crates), then the top functions.
#
#   scripts/profile-broker.sh [seconds] [bench options...]
#   scripts/profile-broker.sh 5 --workers 32
#   scripts/profile-broker.sh 5 --busy-poll 200us
#   PROFILE=relay scripts/profile-broker.sh 5     # the bench's protocol-free relay, to compare
#
# Needs `perf` (Debian: linux-perf). The bench makes only the run profiled (`--runs`), and the
# profile is taken in the middle of its measured part. Without `--busy-poll X` among the options
# the plain broker is profiled; with it, the broker started with that window.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-5}
shift || true
command -v perf >/dev/null || { echo "perf not found (Debian: apt-get install linux-perf)" >&2; exit 1; }
cargo build --profile profiling --locked -p majordomo-cli -p majordomo-tools
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# A copy, so that a rebuild during the run cannot replace the binaries under the bench (it
# finds its fixtures' binary beside its own).
cp target/profiling/majordomo target/profiling/majordomo-bench-fixture "$work/"
want_busy=0
for arg in "$@"; do
    case "$arg" in --busy-poll) want_busy=1 ;; esac
done
warmup=2
measured=$((seconds + 4))
target=${PROFILE:-broker}
case "$target" in
    broker) runs=$([ "$want_busy" = 1 ] && echo busypoll || echo broker); pattern="$work/majordomo broker" ;;
    relay) runs=relay; pattern="$work/majordomo-bench-fixture relay --bind" ;;
    *) echo "PROFILE must be broker or relay" >&2; exit 1 ;;
esac
"$work/majordomo" bench --sizes 64 --runs "$runs" --warmup "${warmup}s" --duration "${measured}s" "$@" >"$work/bench.txt" 2>&1 &
bench=$!
# Find the child to profile: the relay, or the broker that carries the wanted --busy-poll.
pid=""
for _ in $(seq 1 600); do
    for p in $(pgrep -f "$pattern" || true); do
        [ "$target" = relay ] && { pid=$p; continue; }
        cmd=$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null || true)
        case "$cmd" in
            *"--busy-poll 0s"*) [ "$want_busy" = 0 ] && pid=$p ;;
            *) [ "$want_busy" = 1 ] && pid=$p ;;
        esac
    done
    [ -n "$pid" ] && break
    sleep 0.1
done
[ -n "$pid" ] || { echo "$target process not found" >&2; cat "$work/bench.txt" >&2; exit 1; }
sleep $((warmup + 2))
perf record -F 1999 -g -p "$pid" -o "$work/perf.data" -- sleep "$seconds" 2>/dev/null >/dev/null
wait "$bench" || { cat "$work/bench.txt" >&2; exit 1; }
grep -E '^(run|broker|busypoll|relay) ' "$work/bench.txt"
perf report -i "$work/perf.data" --no-children --sort sym --stdio -g none 2>/dev/null |
    python3 -c '
import re, sys
groups = {}
top = []
for line in sys.stdin:
    m = re.match(r"\s+([0-9.]+)%\s+\[(.)\]\s+(.*\S)", line)
    if not m:
        continue
    pct, kind, sym = float(m.group(1)), m.group(2), m.group(3)
    if kind == "k":
        group = "kernel"
    elif re.search(r"majordomo", sym):
        group = "majordomo (ours)"
    else:
        found = re.search(r"\b(zeromq|tokio|futures_\w+|futures|bytes|hashbrown|core::hash|std::hash|alloc|scc|parking_lot|asynchronous_codec|mio)\b", sym)
        if found:
            group = found.group(1)
            group = "hashing" if "hash" in group and group != "hashbrown" else group
            group = "futures" if group.startswith("futures") else group
        elif re.search(r"malloc|free|memmove|memcpy|memcmp|memset|cfree|_int_", sym):
            group = "libc malloc/mem"
        else:
            group = "other"
    groups[group] = groups.get(group, 0.0) + pct
    top.append((pct, sym))
print("\nCPU by component (% of samples):")
for g, p in sorted(groups.items(), key=lambda x: -x[1]):
    print(f"  {p:6.2f}  {g}")
print("\ntop functions:")
for p, s in sorted(top, reverse=True)[:15]:
    print(f"  {p:6.2f}  {s[:110]}")
'
