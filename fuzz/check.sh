#!/usr/bin/env bash
# Type-check the fuzz crate (targets, shared helpers, seed generator) on the
# stable toolchain, so CI notices when proto changes break a fuzz target.
# Running the fuzzers needs cargo-fuzz: see fuzz/README.md.
set -euo pipefail
cd "$(dirname "$0")"
cargo check --manifest-path Cargo.toml --all-targets --locked "$@"
