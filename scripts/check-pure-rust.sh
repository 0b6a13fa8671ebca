#!/usr/bin/env bash
# The dependency graph (every kind of edge, host target) holds no *-sys crate and no `cc` build
# dependency: nothing needs a C compiler or a system library.
set -euo pipefail
cd "$(dirname "$0")/.."
found=$(cargo tree --workspace --locked -e all --prefix none | sed 's/ (.*//' | sort -u | grep -E -- '-sys v|^cc v' || true)
if [ -n "$found" ]; then
    echo "pure-Rust check failed, these crates bind C or need a C compiler:" >&2
    echo "$found" >&2
    exit 1
fi
echo "pure-Rust check: no *-sys crate, no cc"
