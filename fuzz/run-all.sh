#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 600) each, one after another, and prints libFuzzer's
# final statistics. Needs `cargo install cargo-fuzz` and the nightly toolchain.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-600}
for target in $(cargo +nightly fuzz list); do
    echo "== $target"
    cargo +nightly fuzz run "$target" -- -max_total_time="$seconds" -print_final_stats=1 2>&1 \
        | grep -E 'stat::number_of_executed_units|stat::peak_rss_mb|stat::new_units_added|Done|ERROR|panicked' || true
done
