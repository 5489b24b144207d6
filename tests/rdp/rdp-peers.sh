#!/usr/bin/env bash
# rdp-peers.sh — real RDP peers (FreeRDP 2 on Xvfb) for Kakehashi end-to-end tests.
#
#   rdp-peers.sh install
#       apt-get installs freerdp2-x11 freerdp2-shadow-x11 winpr-utils xvfb if any of
#       xfreerdp / freerdp-shadow-cli / winpr-hash / Xvfb is missing. Silent otherwise.
#       Safe to run concurrently: installers serialise on flock(1) of
#       ${RDP_PEERS_INSTALL_LOCK:-/tmp/kakehashi-rdp-peers-install.lock}.
#
#   rdp-peers.sh server --dir DIR --port PORT --cert CRT --key KEY --user U --password P
#                       [--bind ADDR] [--geometry WxH]
#       Xvfb on a free display + freerdp-shadow-cli on ADDR:PORT (default 127.0.0.1),
#       NLA only (/sec:nla), NTLM SAM file made by winpr-hash. CRT/KEY (PEM; ECDSA P-256
#       and RSA both work for TLS/NLA) are copied to DIR/home/.config/freerdp/shadow/.
#       PORT 0 = pick a free port. Prints "RDP_PEERS_SERVER port=N display=:D" first, then
#       execs the server (its PID is this script's PID: kill it, even with SIGKILL, and
#       Xvfb follows via PR_SET_PDEATHSIG). Logs at WLOG_LEVEL (default DEBUG).
#       Ready when a line "Listening on [ADDR]:PORT" appears.
#       Per connection the server logs "Accepted channels:" followed by one line per
#       channel (" rdpdr", " cliprdr", ...) and "Client from IP is activated (WxH@32)".
#
#   rdp-peers.sh client --host H --port PORT --user U --password P [--seconds N]
#                       [--timeout T] [--log FILE] [-- EXTRA_XFREERDP_ARGS...]
#       xfreerdp /sec:nla /cert:ignore on its own Xvfb with a throwaway HOME. Waits up
#       to T s (default 30) for the session to become active, keeps it up N s (default 5)
#       and exits 0 only if: the client reached CONNECTION_STATE_ACTIVE, at least one
#       graphics frame was fully received, and xfreerdp was still running after N s.
#       Otherwise exits non-zero: 4 = CredSSP/NLA rejected (e.g. wrong password; the
#       server then logs "client authentication failure", twice, as xfreerdp retries once),
#       1 = other failure / session dropped / no frame, 2 = usage, 3 = not active in T s.
#       Evidence/diagnostic lines are printed prefixed with "RDP_PEERS_CLIENT"; the first
#       is "RDP_PEERS_CLIENT display=:D", the client's X display (for xclip).
#       Temp files live in ${TMPDIR:-/tmp}/rdp-client.* (removed on exit; left behind only
#       on SIGKILL, so point TMPDIR at the test's temp dir).
#       --log FILE keeps the full WLOG_LEVEL=DEBUG client log (e.g. to grep channel loads).
set -u

die_usage() { echo "rdp-peers.sh: $*" >&2; exit 2; }

have_all() {
    command -v xfreerdp >/dev/null 2>&1 && command -v freerdp-shadow-cli >/dev/null 2>&1 &&
        command -v winpr-hash >/dev/null 2>&1 && command -v Xvfb >/dev/null 2>&1
}

cmd_install() {
    have_all && return 0
    # Tests run in parallel (nextest): one installer at a time, the others wait for it
    # and then find everything present. apt's own locks are waited for, not failed on.
    local lock=${RDP_PEERS_INSTALL_LOCK:-/tmp/kakehashi-rdp-peers-install.lock}
    exec 8>>"$lock" || { echo "rdp-peers.sh: cannot open lock $lock" >&2; return 1; }
    flock -w 900 8 || { echo "rdp-peers.sh: install lock $lock busy for 900s" >&2; return 1; }
    if have_all; then exec 8>&-; return 0; fi
    export DEBIAN_FRONTEND=noninteractive
    local log; log=$(mktemp)
    if ! { apt-get -o DPkg::Lock::Timeout=300 update -q &&
            apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends \
            freerdp2-x11 freerdp2-shadow-x11 winpr-utils xvfb; } >"$log" 2>&1; then
        cat "$log" >&2; rm -f "$log"; echo "rdp-peers.sh: apt-get failed" >&2; return 1
    fi
    rm -f "$log"
    have_all || { echo "rdp-peers.sh: tools still missing after install" >&2; return 1; }
}

port_free() { [ -z "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]; }
pick_port() {
    local p i
    for i in $(seq 1 200); do
        # Below Linux's ephemeral range (32768-60999): a port picked there can be
        # taken by any outgoing connection of a parallel test before we bind it.
        p=$(( 10000 + (RANDOM * 32768 + RANDOM) % 22000 ))
        port_free "$p" && { echo "$p"; return 0; }
    done
    return 1
}

# start_xvfb WORKDIR GEOMETRY -> sets XVFB_PID, XVFB_DISPLAY. Xvfb picks a free display
# itself (-displayfd) and dies with SIGTERM when its parent process dies.
# -noreset: freerdp-shadow-cli opens the display, closes it (monitor enumeration) and
# opens it again; without -noreset Xvfb regenerates when that last client leaves and,
# on a loaded machine (parallel tests), refuses the reopen ("failed to open display").
start_xvfb() {
    local dir=$1 geom=$2 dfile="$1/xvfb.display" i
    : >"$dfile"
    setpriv --pdeathsig TERM Xvfb -displayfd 9 -screen 0 "${geom}x24" -nolisten tcp -noreset \
        9>"$dfile" >"$dir/xvfb.log" 2>&1 &
    XVFB_PID=$!
    for i in $(seq 1 100); do
        if [ -s "$dfile" ]; then
            XVFB_DISPLAY=":$(tr -dc 0-9 <"$dfile")"
            [ "$XVFB_DISPLAY" != ":" ] && return 0
        fi
        kill -0 "$XVFB_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "rdp-peers.sh: Xvfb failed to start:" >&2; cat "$dir/xvfb.log" >&2
    kill "$XVFB_PID" 2>/dev/null
    return 1
}

cmd_server() {
    local dir="" port="" cert="" key="" user="" pass="" bind=127.0.0.1 geom=1024x768
    while [ $# -gt 0 ]; do
        case $1 in
            --dir) dir=$2; shift 2 ;; --port) port=$2; shift 2 ;;
            --cert) cert=$2; shift 2 ;; --key) key=$2; shift 2 ;;
            --user) user=$2; shift 2 ;; --password) pass=$2; shift 2 ;;
            --bind) bind=$2; shift 2 ;; --geometry) geom=$2; shift 2 ;;
            *) die_usage "server: unknown argument $1" ;;
        esac
    done
    [ -n "$dir" ] && [ -n "$port" ] && [ -n "$cert" ] && [ -n "$key" ] && [ -n "$user" ] &&
        [ -n "$pass" ] || die_usage "server: --dir --port --cert --key --user --password are required"
    [ -r "$cert" ] && [ -r "$key" ] || die_usage "server: cannot read cert/key"
    mkdir -p "$dir/home/.config/freerdp/shadow" || exit 1
    dir=$(cd "$dir" && pwd)
    cp "$cert" "$dir/home/.config/freerdp/shadow/shadow.crt" &&
        cp "$key" "$dir/home/.config/freerdp/shadow/shadow.key" &&
        chmod 600 "$dir/home/.config/freerdp/shadow/shadow.key" || exit 1
    # SAM line format: "User:Domain:LMHash:NTHash:::" -> winpr-hash -f sam gives "U:::NT:::"
    winpr-hash -u "$user" -p "$pass" -f sam >"$dir/sam" || { echo "winpr-hash failed" >&2; exit 1; }
    echo >>"$dir/sam"
    if [ "$port" = 0 ]; then port=$(pick_port) || { echo "no free port" >&2; exit 1; }; fi
    start_xvfb "$dir" "$geom" || exit 1
    echo "RDP_PEERS_SERVER port=$port display=$XVFB_DISPLAY xvfb_pid=$XVFB_PID"
    export HOME="$dir/home" XDG_CONFIG_HOME="$dir/home/.config" DISPLAY="$XVFB_DISPLAY"
    export WLOG_LEVEL="${WLOG_LEVEL:-DEBUG}"
    unset XAUTHORITY
    # exec: this PID becomes the server; Xvfb gets SIGTERM when it dies (pdeathsig).
    # stdbuf: WLog writes INFO/DEBUG to stdout, which libc block-buffers into a pipe/file.
    exec stdbuf -oL -eL freerdp-shadow-cli "/port:$port" "/bind-address:$bind" /sec:nla \
        "/sam-file:$dir/sam"
}

cmd_client() {
    local host="" port="" user="" pass="" secs=5 tmo=30 keep_log="" extra=()
    while [ $# -gt 0 ]; do
        case $1 in
            --host) host=$2; shift 2 ;; --port) port=$2; shift 2 ;;
            --user) user=$2; shift 2 ;; --password) pass=$2; shift 2 ;;
            --seconds) secs=$2; shift 2 ;; --timeout) tmo=$2; shift 2 ;;
            --log) keep_log=$2; shift 2 ;;
            --) shift; extra=("$@"); break ;;
            *) die_usage "client: unknown argument $1" ;;
        esac
    done
    [ -n "$host" ] && [ -n "$port" ] && [ -n "$user" ] && [ -n "$pass" ] ||
        die_usage "client: --host --port --user --password are required"

    local work; work=$(mktemp -d "${TMPDIR:-/tmp}/rdp-client.XXXXXX") || exit 1
    local log="$work/xfreerdp.log" cpid=""
    XVFB_PID=""
    cleanup() {
        [ -n "$cpid" ] && kill "$cpid" 2>/dev/null && { sleep 0.3; kill -9 "$cpid" 2>/dev/null; }
        [ -n "$XVFB_PID" ] && kill "$XVFB_PID" 2>/dev/null
        wait 2>/dev/null
        [ -n "$keep_log" ] && [ -f "$log" ] && cp "$log" "$keep_log"
        rm -rf "$work"
    }
    trap cleanup EXIT
    trap 'exit 130' INT TERM HUP

    start_xvfb "$work" 1024x768 || exit 1
    # The client's display, for tests that set or read its clipboard (xclip -display).
    echo "RDP_PEERS_CLIENT display=$XVFB_DISPLAY"
    mkdir -p "$work/home"
    HOME="$work/home" XDG_CONFIG_HOME="$work/home/.config" DISPLAY="$XVFB_DISPLAY" \
        WLOG_LEVEL=DEBUG setpriv --pdeathsig KILL stdbuf -oL -eL \
        xfreerdp "/v:$host:$port" "/u:$user" "/p:$pass" /sec:nla /cert:ignore \
        -grab-keyboard "${extra[@]}" </dev/null >"$log" 2>&1 &
    cpid=$!

    local t0=$SECONDS active="" rc
    # phase 1: wait for activation
    while :; do
        active=$(grep -m1 -- '--> CONNECTION_STATE_ACTIVE' "$log" 2>/dev/null)
        [ -n "$active" ] && break
        if ! kill -0 "$cpid" 2>/dev/null; then
            wait "$cpid"; rc=$?; cpid=""
            echo "RDP_PEERS_CLIENT FAIL: xfreerdp exited with $rc before the session became active"
            grep -a 'ERROR\]\[com.freerdp.core\]\|ERRCONNECT\|ERRINFO\|authentication\|LOGON' "$log" |
                grep -v 'com.freerdp.utils' | head -5 | sed 's/^/RDP_PEERS_CLIENT   /'
            local last; last=$(grep -a 'rdp_client_transition_to_state' "$log" | tail -1)
            echo "RDP_PEERS_CLIENT last state: ${last##*- }"
            # xfreerdp exits 147 (transport failed) for both a wrong password and a dead
            # peer; the state machine tells them apart: NLA started, then fell back.
            if grep -aq 'CONNECTION_STATE_NLA --> CONNECTION_STATE_INITIAL' "$log"; then
                echo "RDP_PEERS_CLIENT NLA_REJECTED: peer closed during CredSSP (wrong credentials?)"
                exit 4
            fi
            exit 1
        fi
        if [ $((SECONDS - t0)) -ge "$tmo" ]; then
            echo "RDP_PEERS_CLIENT FAIL: not active after ${tmo}s"
            tail -5 "$log" | sed 's/^/RDP_PEERS_CLIENT   /'
            exit 3
        fi
        sleep 0.2
    done
    echo "RDP_PEERS_CLIENT active after $((SECONDS - t0))s: $active"
    # phase 2: keep the session up for N seconds; it must not drop
    local t1=$SECONDS
    while [ $((SECONDS - t1)) -lt "$secs" ]; do
        if ! kill -0 "$cpid" 2>/dev/null; then
            wait "$cpid"; rc=$?; cpid=""
            echo "RDP_PEERS_CLIENT FAIL: session dropped after $((SECONDS - t1))s (xfreerdp exit $rc)"
            grep -a 'ERROR\]' "$log" | grep -v 'com.freerdp.utils' | head -5 | sed 's/^/RDP_PEERS_CLIENT   /'
            exit 1
        fi
        sleep 0.2
    done
    # graphics: a complete frame (surface frame marker End, or RDPGFX EndFrame) arrived
    local frame
    frame=$(grep -a -m1 'SurfaceFrameMarker: action: End\|frameAction 1\|RecvEndFramePdu\|EndFrame' "$log")
    if [ -z "$frame" ]; then
        echo "RDP_PEERS_CLIENT FAIL: active for ${secs}s but no graphics frame received"
        exit 1
    fi
    echo "RDP_PEERS_CLIENT frame: $frame"
    echo "RDP_PEERS_CLIENT OK: session up ${secs}s"
    exit 0
}

case ${1:-} in
    install) shift; cmd_install "$@" ;;
    server) shift; cmd_server "$@" ;;
    client) shift; cmd_client "$@" ;;
    *) die_usage "usage: $0 install | server ... | client ... (see header)" ;;
esac
