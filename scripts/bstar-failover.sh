#!/bin/sh
# Measures the failover time of a Binary Star pair of `majordomo broker --bstar` processes at the
# default pair settings: SIGKILL the active broker BSTAR_KILLS times (default 20) under four
# clients of both brokers (Client::with_endpoints), and print each failover (the last reply of the dead broker to the first of
# the other), p50, p99 and the requests lost. About two minutes; run it on an otherwise idle
# machine, since a busy one adds its scheduling delays to every failover.
set -eu
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || ./scripts/setup-interop.sh
cargo build --release --locked -p majordomo-cli
exec cargo test --release --locked -p integration-tests --test binary_star -- \
    --ignored --exact failover_time --nocapture
