#!/usr/bin/env bash
# The whole Kakehashi test suite, from a fresh clone. Installs what it needs
# (Debian packages with apt-get, cargo tools from crates.io), then runs the
# format and lint checks, every unit test, every end-to-end test (real
# processes on loopback, real TLS and QUIC, real FreeRDP peers), the doc
# tests, and a build of the fuzz targets.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

step "System packages"
pkgs=()
command -v xfreerdp >/dev/null 2>&1 || pkgs+=(freerdp2-x11)
command -v freerdp-shadow-cli >/dev/null 2>&1 || pkgs+=(freerdp2-shadow-x11)
command -v winpr-hash >/dev/null 2>&1 || pkgs+=(winpr-utils)
command -v Xvfb >/dev/null 2>&1 || pkgs+=(xvfb)
# The RDP filter's clipboard-direction test needs a desk that serves a clipboard.
command -v xrdp >/dev/null 2>&1 || pkgs+=(xrdp)
command -v Xvnc >/dev/null 2>&1 || pkgs+=(tigervnc-standalone-server)
command -v xclip >/dev/null 2>&1 || pkgs+=(xclip)
if [ ${#pkgs[@]} -gt 0 ]; then
  echo "installing: ${pkgs[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${pkgs[@]}"
else
  echo "all present"
fi

step "Cargo tools"
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install cargo-nextest --locked
fi
cargo nextest --version

step "Format"
cargo fmt --all -- --check

step "Clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "Build (binaries are spawned by the end-to-end tests)"
cargo build --workspace --bins --tests

step "Tests"
cargo nextest run --workspace --no-fail-fast

step "Doc tests"
cargo test --workspace --doc

if [ -x fuzz/check.sh ]; then
  step "Fuzz targets build"
  fuzz/check.sh
fi

if [ -f deny.toml ]; then
  step "cargo deny"
  if ! cargo deny --version >/dev/null 2>&1; then
    cargo install cargo-deny --locked
  fi
  # advisories are not checked: their database is not reachable from here (see deny.toml)
  cargo deny check bans licenses sources
fi

step "All checks passed"
