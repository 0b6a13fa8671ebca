#!/usr/bin/env bash
# The dependency graph (every kind of edge, host target) holds no *-sys crate and no `cc` build
# dependency: nothing needs a C compiler or a system library. linux-raw-sys is named like a
# binding but is Rust: the kernel's constants and structs, for rustix's system calls in inline
# assembly (under crossterm, for `majordomo top`), with no build script and no library to link.
set -euo pipefail
cd "$(dirname "$0")/.."
found=$(cargo tree --workspace --locked -e all --prefix none | sed 's/ (.*//' | sort -u | grep -E -- '-sys v|^cc v' | grep -v -E '^linux-raw-sys v' || true)
if [ -n "$found" ]; then
    echo "pure-Rust check failed, these crates bind C or need a C compiler:" >&2
    echo "$found" >&2
    exit 1
fi
echo "pure-Rust check: no *-sys crate, no cc"
