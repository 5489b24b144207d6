#!/usr/bin/env bash
# The whole Kakehashi test suite, from a fresh clone. Installs what it needs
# (Debian packages with apt-get, cargo tools from crates.io), then runs the
# format and lint checks, every unit test, every end-to-end test (real
# processes on loopback, real TLS and QUIC, real FreeRDP peers), the doc
# tests, and a build of the fuzz targets.
set -euo pipefail
cd "$(dirname "$0")/.."

# One clean build per run: incremental caches only help an edit-compile loop
# and triple the size of target/ (CI once ran out of disk on them).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

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
# Drive redirection against xrdp: rdesktop announces drives to Debian 12's xrdp
# (xfreerdp 2 does not), and xrdp-chansrv mounts them with FUSE.
command -v rdesktop >/dev/null 2>&1 || pkgs+=(rdesktop)
command -v fusermount3 >/dev/null 2>&1 || pkgs+=(fuse3)
# The real-browser test (tests/tests/e2e/browser.rs): Debian's chromium,
# driven by playwright-core under node.
command -v chromium >/dev/null 2>&1 || pkgs+=(chromium)
command -v node >/dev/null 2>&1 || pkgs+=(nodejs)
command -v npm >/dev/null 2>&1 || pkgs+=(npm)
# The install walk-through's backup step (deploy/README.md, tests/tests/e2e/docs.rs):
# SQLite's own online backup while the gateway runs.
command -v sqlite3 >/dev/null 2>&1 || pkgs+=(sqlite3)
# The walk-through's operator PC trusts the portal's private CA in Chromium's NSS
# store (deploy/README.md §5, doctest:browser-ca): certutil.
command -v certutil >/dev/null 2>&1 || pkgs+=(libnss3-tools)
# PostgreSQL's server programs: the cluster tests' fixture (store/tests/support/pg.rs)
# and `kakehashi-demo --gateways 3` (tests/tests/e2e/demo.rs) start their own servers.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || pkgs+=(postgresql)
# The load balancer in front of the gateway (tests/tests/e2e/proxy.rs runs
# deploy/haproxy.example.cfg); Debian installs it in /usr/sbin.
[ -x /usr/sbin/haproxy ] || pkgs+=(haproxy)
# The cluster tests that run each gateway in its own network namespace
# (tests/tests/e2e/netns_cluster.rs): `ip netns`, veth and bridges.
command -v ip >/dev/null 2>&1 || pkgs+=(iproute2)
# A Japanese font, so the officer-page screenshot is readable.
fc-list :lang=ja 2>/dev/null | grep -q . || pkgs+=(fonts-ipafont-gothic)
if [ ${#pkgs[@]} -gt 0 ]; then
  echo "installing: ${pkgs[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${pkgs[@]}"
else
  echo "all present"
fi

step "promtool (alert rule and dashboard query checks, tests/tests/e2e/ops.rs)"
# Debian 12 ships promtool only inside the `prometheus` package, whose
# installation would also start a Prometheus server. So the package is
# downloaded, not installed, and only /usr/bin/promtool is unpacked under
# target/tools (kept between runs).
promtool_dir="$PWD/target/tools/prometheus"
if ! command -v promtool >/dev/null 2>&1; then
  if [ ! -x "$promtool_dir/usr/bin/promtool" ]; then
    if ! apt-cache show prometheus >/dev/null 2>&1; then
      $SUDO apt-get update -q
    fi
    dl="$(mktemp -d)"
    chmod 777 "$dl" # apt downloads as the _apt user
    (cd "$dl" && apt-get download -q prometheus)
    mkdir -p "$promtool_dir"
    dpkg-deb --fsys-tarfile "$dl"/prometheus_*.deb | tar -x -C "$promtool_dir" ./usr/bin/promtool
    rm -rf "$dl"
  fi
  export PATH="$promtool_dir/usr/bin:$PATH"
fi
promtool --version 2>&1 | head -n1

step "Browser test dependencies (tests/browser)"
# playwright-core only (it downloads no browser); reinstalled when the lock changes.
(
  cd tests/browser
  stamp=node_modules/.kakehashi-lock.sha256
  want="$(sha256sum package-lock.json | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    npm ci --no-audit --no-fund
    echo "$want" >"$stamp"
  else
    echo "up to date"
  fi
)
export KAKEHASHI_CHROMIUM="${KAKEHASHI_CHROMIUM:-$(command -v chromium)}"
echo "chromium: $KAKEHASHI_CHROMIUM ($("$KAKEHASHI_CHROMIUM" --version 2>/dev/null | tail -n1)), node $(node --version)"

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
