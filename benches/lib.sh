# Shell pieces the bench scripts share; `source benches/lib.sh` after
# `cd` to the repository root.

# haproxy_config OUT FRONT_PORT BACK_PORT THREADS CA CRL
# Writes OUT/haproxy.cfg, the baseline relay of the benches: TLS 1.3
# terminated on both legs, a client certificate required on the front
# (the gateway's certificate, OUT/haproxy-server.pem) and presented to the
# back (the relay's agent certificate, OUT/haproxy-client.pem), as the
# gateway does with laptops and agents; THREADS threads, like the gateway's
# workers.
haproxy_config() {
  local out=$1 front=$2 back=$3 threads=$4 ca=$5 crl=$6
  cat > "$out/haproxy.cfg" <<CFG
global
  maxconn $(( $(ulimit -n) / 2 - 100 ))
  nbthread $threads
  ssl-default-bind-options ssl-min-ver TLSv1.3
  ssl-default-server-options ssl-min-ver TLSv1.3
defaults
  mode tcp
  timeout connect 5s
  timeout client 120s
  timeout server 120s
frontend terminals
  bind 127.0.0.1:$front ssl crt $out/haproxy-server.pem ca-file $ca crl-file $crl verify required
  default_backend desks
backend desks
  server desk 127.0.0.1:$back ssl crt $out/haproxy-client.pem ca-file $ca verify required verifyhost localhost
CFG
}

# fsync_shim DIR
# Builds DIR/fsync-delay.so (benches/fsync-delay.c: an LD_PRELOAD shim
# adding KAKEHASHI_FSYNC_DELAY_US to every fsync) readable by the postgres
# user, which the server runs as (it refuses to run as root).
fsync_shim() {
  local dir=$1
  mkdir -p "$dir"
  cc -O2 -shared -fPIC -o "$dir/fsync-delay.so" benches/fsync-delay.c -ldl
  chmod 0755 "$dir" "$dir/fsync-delay.so"
}

# need_deb CMD PKG...
# Installs the Debian packages PKG... with apt-get (one `apt-get update`
# per script) unless CMD is on the PATH.
APT_UPDATED=0
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
need_deb() {
  local cmd=$1; shift
  if ! command -v "$cmd" >/dev/null 2>&1; then
    [ $APT_UPDATED = 1 ] || { $SUDO apt-get update -qq; APT_UPDATED=1; }
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
  fi
}

# need_postgres: PostgreSQL's server programs (Debian's postgresql), for
# the benches that start a throwaway server.
need_postgres() {
  if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    [ $APT_UPDATED = 1 ] || { $SUDO apt-get update -qq; APT_UPDATED=1; }
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
  fi
}

# bench_build: the release gateway and load generator, unless
# BENCH_NO_BUILD=1 (the binaries already built).
bench_build() {
  [ "${BENCH_NO_BUILD:-0}" = 1 ] || cargo build --release -q -p kakehashi-gateway -p kakehashi-benches
}

# need_two_cores WHY: exit unless the machine has two cores (a bench that
# pins the gateway and the load generator to one each).
need_two_cores() {
  if [ "$(nproc --all)" -lt 2 ]; then
    echo "$1: it needs 2 cores" >&2
    exit 1
  fi
}

# warn_if_loaded: a warning when the machine is not quiet before a run
# whose figures are per core or latencies (load average over 0.5).
warn_if_loaded() {
  local load1
  load1=$(cut -d' ' -f1 /proc/loadavg)
  if awk -v l="$load1" 'BEGIN { exit !(l > 0.5) }'; then
    echo "warning: load average $load1 before the run: other work shares the cores, the figures will be noisy" >&2
  fi
}

# bench_limits: as many descriptors as allowed (thousands of sessions hold
# several each, on each side), and the UDP buffers the gateway's QUIC
# sockets ask for (8 MiB; the kernel grants at most rmem_max/wmem_max,
# raised as deploy/sysctl/90-kakehashi-gateway.conf does).
bench_limits() {
  ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"
  echo "file descriptors: $(ulimit -n)" >&2
  local k
  for k in net.core.rmem_max net.core.wmem_max; do
    if [ "$(sysctl -n $k 2>/dev/null || echo 0)" -lt 8388608 ]; then
      sysctl -q -w $k=8388608 2>/dev/null || echo "cannot raise $k (not root?): QUIC may drop packets" >&2
    fi
  done
}
