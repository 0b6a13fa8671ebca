#!/usr/bin/env bash
# Builds the `majordomo` binary with a statically linked C runtime and checks that the result
# needs no dynamic loader and no shared library. (With the musl target installed, the same holds
# for `cargo build --release --target x86_64-unknown-linux-musl -p majordomo-cli`.)
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-gnu
RUSTFLAGS="-C target-feature=+crt-static --cfg poly1305_force_soft" cargo build --release --locked --target "$target" -p majordomo-cli
bin="target/$target/release/majordomo"
if readelf -l "$bin" | grep -qi 'interp'; then
    echo "static check failed: $bin asks for a dynamic loader" >&2
    exit 1
fi
if readelf -d "$bin" | grep -q 'NEEDED'; then
    echo "static check failed: $bin needs shared libraries:" >&2
    readelf -d "$bin" | grep NEEDED >&2
    exit 1
fi
echo "static check: $bin is statically linked"
