#!/usr/bin/env bash
# xrdp-peer.sh — an xrdp desk (Xvnc backend, TLS security, no NLA) for the Kakehashi
# clipboard-direction and device-redirection tests: xrdp's xrdp-chansrv serves the RDP
# clipboard and syncs it with the session's X display, so text can be set and read on
# both sides with xclip; it also serves client drives, mounted with FUSE under
# ~U/thinclient_drives/NAME (sesman.ini [Chansrv] FuseMountName=thinclient_drives), and
# logs every device the client announces ("Detected remote drive 'NAME'", "Detected
# remote printer 'PRN1' (not supported)") at INFO in ~U/.local/share/xrdp/xrdp-chansrv.D.log.
#
# Drives are redirected with rdesktop, not xfreerdp: Debian 12's xrdp 0.9.21 sends the
# rdpdr User Logged On PDU before its capabilities, FreeRDP 2.11 ignores it and then only
# ever announces smartcards (xrdp issues #2834/#2971, fixed in xrdp 0.9.24).
#
#   xrdp-peer.sh install
#       apt-get installs xrdp tigervnc-standalone-server xclip fuse3 rdesktop if missing
#       (serialised on flock(1) like rdp-peers.sh install). fuse3 gives chansrv the
#       setuid fusermount it mounts drives with (/dev/fuse must exist).
#
#   xrdp-peer.sh server --dir DIR --port PORT --cert CRT --key KEY --user U --password P
#       Creates the local user U with password P (a test machine only), a ~U/startwm.sh
#       that just sleeps, and xrdp.ini / sesman.ini in DIR (security_layer=tls with
#       CRT/KEY, autorun=Xvnc, logs in DIR). Starts xrdp-sesman and execs xrdp on
#       127.0.0.1:PORT (0 = pick one). Prints "XRDP_PEER port=N" first. sesman keeps its
#       default port 3350 (xrdp reads it from /etc/xrdp/sesman.ini), so one server at a
#       time per machine: the script takes ${XRDP_PEER_LOCK:-/tmp/kakehashi-xrdp.lock}.
#       Killing this script's PID stops xrdp; sesman and the session follow.
#
#   xrdp-peer.sh xclip --user U [--wait SECS] -- XCLIP_ARGS...
#       Runs xclip on U's session display (the user's Xvnc, found with pgrep; waits up to
#       SECS, default 20, for it to appear), with U's X authority.
#
#   xrdp-peer.sh rdesktop --host H --port PORT --user U --password P [--timeout T]
#                         [-- EXTRA_RDESKTOP_ARGS...]
#       rdesktop -a 32 -g 1024x768 (the same colour depth and size as xfreerdp's default,
#       so xrdp reconnects U's existing session rather than starting a second one) on its
#       own Xvfb with a throwaway HOME under ${TMPDIR:-/tmp}; the certificate prompt is
#       answered "yes". Prints "XRDP_PEER_RDESKTOP display=:D", then
#       "XRDP_PEER_RDESKTOP connected" once rdesktop reports the TLS connection, and runs
#       until rdesktop exits (its exit status) or this script is killed. Exits 3 if not
#       connected within T s (default 30). Diagnostics are prefixed "XRDP_PEER_RDESKTOP ".
#
#   xrdp-peer.sh drive-read --user U --name NAME --file F
#       Prints ~U/thinclient_drives/NAME/F (FuseMountName of /etc/xrdp/sesman.ini, which
#       chansrv reads) read as U (the FUSE mount is U's alone), or exits 1 if it cannot.
#
#   xrdp-peer.sh chansrv-log --user U
#       Prints U's xrdp-chansrv logs (one per display; chansrv truncates its own at start).
set -u

die_usage() { echo "xrdp-peer.sh: $*" >&2; exit 2; }

have_all() {
    local t
    for t in xrdp Xvnc xclip fusermount3 rdesktop Xvfb; do
        command -v "$t" >/dev/null 2>&1 || return 1
    done
}

cmd_install() {
    have_all && return 0
    local lock=${RDP_PEERS_INSTALL_LOCK:-/tmp/kakehashi-rdp-peers-install.lock}
    exec 8>>"$lock" || return 1
    flock -w 900 8 || { echo "xrdp-peer.sh: install lock busy" >&2; return 1; }
    if have_all; then exec 8>&-; return 0; fi
    export DEBIAN_FRONTEND=noninteractive
    local log; log=$(mktemp)
    if ! { apt-get -o DPkg::Lock::Timeout=300 update -q &&
            apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends \
            xrdp tigervnc-standalone-server xclip fuse3 rdesktop xvfb; } >"$log" 2>&1; then
        cat "$log" >&2; rm -f "$log"; echo "xrdp-peer.sh: apt-get failed" >&2; return 1
    fi
    rm -f "$log"
    have_all || { echo "xrdp-peer.sh: tools still missing after install" >&2; return 1; }
}

pick_port() {
    local p i
    for i in $(seq 1 200); do
        # Below the ephemeral range (32768-60999), as in rdp-peers.sh.
        p=$(( 10000 + (RANDOM * 32768 + RANDOM) % 22000 ))
        [ -z "$(ss -Hltn "sport = :$p" 2>/dev/null)" ] && { echo "$p"; return 0; }
    done
    return 1
}

cmd_server() {
    local dir="" port="" cert="" key="" user="" pass=""
    while [ $# -gt 0 ]; do
        case $1 in
            --dir) dir=$2; shift 2 ;; --port) port=$2; shift 2 ;;
            --cert) cert=$2; shift 2 ;; --key) key=$2; shift 2 ;;
            --user) user=$2; shift 2 ;; --password) pass=$2; shift 2 ;;
            *) die_usage "server: unknown argument $1" ;;
        esac
    done
    [ -n "$dir" ] && [ -n "$port" ] && [ -n "$cert" ] && [ -n "$key" ] && [ -n "$user" ] &&
        [ -n "$pass" ] || die_usage "server: --dir --port --cert --key --user --password are required"
    mkdir -p "$dir" && dir=$(cd "$dir" && pwd) || exit 1
    exec 9>>"${XRDP_PEER_LOCK:-/tmp/kakehashi-xrdp.lock}"
    flock -w 120 9 || { echo "xrdp-peer.sh: another xrdp peer is running" >&2; exit 1; }
    id "$user" >/dev/null 2>&1 || useradd -m -s /bin/bash "$user" || exit 1
    echo "$user:$pass" | chpasswd || exit 1
    local home; home=$(getent passwd "$user" | cut -d: -f6)
    printf '#!/bin/sh\nexec sleep infinity\n' >"$home/startwm.sh"
    chmod 755 "$home/startwm.sh"; chown "$user" "$home/startwm.sh"
    # Leftovers of an earlier run: its session, pid files and chansrv logs.
    pkill -u "$user" 2>/dev/null; sleep 0.2
    rm -f "$home"/.local/share/xrdp/xrdp-chansrv.*.log
    mkdir -p /run/xrdp/sockdir && chmod 3777 /run/xrdp/sockdir
    rm -f /run/xrdp/xrdp.pid /run/xrdp/xrdp-sesman.pid
    cp "$cert" "$dir/cert.pem" && cp "$key" "$dir/key.pem" && chmod 600 "$dir/key.pem" || exit 1
    sed -e "s|^security_layer=.*|security_layer=tls|" \
        -e "s|^certificate=.*|certificate=$dir/cert.pem|" \
        -e "s|^key_file=.*|key_file=$dir/key.pem|" \
        -e "s|^autorun=.*|autorun=Xvnc|" \
        -e "s|^LogFile=.*|LogFile=$dir/xrdp.log|" \
        -e "s|^LogLevel=.*|LogLevel=DEBUG|" \
        -e "s|^EnableSyslog=.*|EnableSyslog=false|" \
        /etc/xrdp/xrdp.ini >"$dir/xrdp.ini" || exit 1
    sed -e "s|^LogFile=.*|LogFile=$dir/sesman.log|" \
        -e "s|^LogLevel=.*|LogLevel=DEBUG|" \
        -e "s|^EnableSyslog=.*|EnableSyslog=false|" \
        -e "s|^ListenAddress=.*|ListenAddress=127.0.0.1|" \
        /etc/xrdp/sesman.ini >"$dir/sesman.ini" || exit 1
    if [ "$port" = 0 ]; then port=$(pick_port) || { echo "no free port" >&2; exit 1; }; fi
    echo "XRDP_PEER port=$port"
    # 9>&-: the lock stays with this script only, not with xrdp's sessions.
    setpriv --pdeathsig TERM xrdp-sesman -n -c "$dir/sesman.ini" >"$dir/sesman.out" 2>&1 9>&- &
    local sesman=$!
    trap 'kill $sesman 2>/dev/null; pkill -u "$user" 2>/dev/null' EXIT
    trap 'exit 143' TERM INT HUP
    # pdeathsig: a SIGKILL of this script (a test's kill on drop) still stops both.
    setpriv --pdeathsig TERM xrdp -n -c "$dir/xrdp.ini" -p "$port" >"$dir/xrdp.out" 2>&1 9>&- &
    local x=$!
    trap 'kill $x $sesman 2>/dev/null; pkill -u "$user" 2>/dev/null' EXIT
    wait $x
}

cmd_xclip() {
    local user="" wait=20
    while [ $# -gt 0 ]; do
        case $1 in
            --user) user=$2; shift 2 ;; --wait) wait=$2; shift 2 ;;
            --) shift; break ;;
            *) die_usage "xclip: unknown argument $1" ;;
        esac
    done
    [ -n "$user" ] || die_usage "xclip: --user is required"
    local home display="" i
    home=$(getent passwd "$user" | cut -d: -f6)
    for i in $(seq 1 $((wait * 5))); do
        display=$(pgrep -u "$user" -a Xvnc | grep -o ' :[0-9]*' | head -1 | tr -d ' ')
        [ -n "$display" ] && break
        sleep 0.2
    done
    [ -n "$display" ] || { echo "xrdp-peer.sh: no Xvnc session for $user" >&2; exit 1; }
    DISPLAY=$display XAUTHORITY=$home/.Xauthority exec timeout 10 xclip "$@"
}

cmd_rdesktop() {
    local host="" port="" user="" pass="" tmo=30 extra=()
    while [ $# -gt 0 ]; do
        case $1 in
            --host) host=$2; shift 2 ;; --port) port=$2; shift 2 ;;
            --user) user=$2; shift 2 ;; --password) pass=$2; shift 2 ;;
            --timeout) tmo=$2; shift 2 ;;
            --) shift; extra=("$@"); break ;;
            *) die_usage "rdesktop: unknown argument $1" ;;
        esac
    done
    [ -n "$host" ] && [ -n "$port" ] && [ -n "$user" ] && [ -n "$pass" ] ||
        die_usage "rdesktop: --host --port --user --password are required"
    local work; work=$(mktemp -d "${TMPDIR:-/tmp}/xrdp-rdesktop.XXXXXX") || exit 1
    local log="$work/rdesktop.log" dfile="$work/xvfb.display" xvfb="" cpid="" i
    cleanup() {
        [ -n "$cpid" ] && kill "$cpid" 2>/dev/null
        [ -n "$xvfb" ] && kill "$xvfb" 2>/dev/null
        wait 2>/dev/null
        rm -rf "$work"
    }
    trap cleanup EXIT
    trap 'exit 143' TERM INT HUP
    : >"$dfile"
    setpriv --pdeathsig TERM Xvfb -displayfd 9 -screen 0 1024x768x24 -nolisten tcp -noreset \
        9>"$dfile" >"$work/xvfb.log" 2>&1 &
    xvfb=$!
    local display=""
    for i in $(seq 1 100); do
        [ -s "$dfile" ] && display=":$(tr -dc 0-9 <"$dfile")" && [ "$display" != ":" ] && break
        display=""
        kill -0 "$xvfb" 2>/dev/null || break
        sleep 0.1
    done
    [ -n "$display" ] || { echo "XRDP_PEER_RDESKTOP FAIL: Xvfb did not start"; cat "$work/xvfb.log"; exit 1; }
    echo "XRDP_PEER_RDESKTOP display=$display"
    mkdir -p "$work/home"
    # rdesktop asks on stdin whether to trust a certificate it cannot verify.
    echo yes | HOME="$work/home" DISPLAY="$display" setpriv --pdeathsig KILL \
        rdesktop -a 32 -g 1024x768 -u "$user" -p "$pass" "${extra[@]}" "$host:$port" \
        >"$log" 2>&1 &
    cpid=$!
    local t0=$SECONDS
    until grep -q 'Connection established' "$log" 2>/dev/null; do
        if ! kill -0 "$cpid" 2>/dev/null; then
            wait "$cpid"; local rc=$?; cpid=""
            echo "XRDP_PEER_RDESKTOP FAIL: rdesktop exited with $rc before connecting"
            sed 's/^/XRDP_PEER_RDESKTOP   /' "$log" | tail -20
            exit 1
        fi
        if [ $((SECONDS - t0)) -ge "$tmo" ]; then
            echo "XRDP_PEER_RDESKTOP FAIL: not connected after ${tmo}s"
            sed 's/^/XRDP_PEER_RDESKTOP   /' "$log" | tail -20
            exit 3
        fi
        sleep 0.2
    done
    echo "XRDP_PEER_RDESKTOP connected after $((SECONDS - t0))s"
    wait "$cpid"; local rc=$?; cpid=""
    echo "XRDP_PEER_RDESKTOP exited with $rc"
    sed 's/^/XRDP_PEER_RDESKTOP   /' "$log" | tail -20
    exit "$rc"
}

cmd_drive_read() {
    local user="" name="" file=""
    while [ $# -gt 0 ]; do
        case $1 in
            --user) user=$2; shift 2 ;; --name) name=$2; shift 2 ;;
            --file) file=$2; shift 2 ;;
            *) die_usage "drive-read: unknown argument $1" ;;
        esac
    done
    [ -n "$user" ] && [ -n "$name" ] && [ -n "$file" ] ||
        die_usage "drive-read: --user --name --file are required"
    local home; home=$(getent passwd "$user" | cut -d: -f6)
    [ -n "$home" ] || { echo "xrdp-peer.sh: no user $user" >&2; exit 1; }
    # chansrv reads /etc/xrdp/sesman.ini ([Chansrv] FuseMountName, relative to the home
    # directory unless absolute; %u = uid, %U = user name).
    local mount uid; uid=$(id -u "$user")
    mount=$(awk -F= '/^\[/ { s = ($0 == "[Chansrv]") } s && $1 == "FuseMountName" { print $2 }' \
        /etc/xrdp/sesman.ini | tail -1)
    mount=${mount:-thinclient_drives}
    mount=${mount//%u/$uid}; mount=${mount//%U/$user}
    case $mount in /*) ;; *) mount="$home/$mount" ;; esac
    runuser -u "$user" -- timeout 10 cat "$mount/$name/$file"
}

cmd_chansrv_log() {
    local user=""
    while [ $# -gt 0 ]; do
        case $1 in
            --user) user=$2; shift 2 ;;
            *) die_usage "chansrv-log: unknown argument $1" ;;
        esac
    done
    [ -n "$user" ] || die_usage "chansrv-log: --user is required"
    local home; home=$(getent passwd "$user" | cut -d: -f6)
    local f
    for f in "$home"/.local/share/xrdp/xrdp-chansrv.*.log; do
        [ -f "$f" ] && { cat "$f"; echo; }
    done
    return 0
}

case ${1:-} in
    install) shift; cmd_install "$@" ;;
    server) shift; cmd_server "$@" ;;
    xclip) shift; cmd_xclip "$@" ;;
    rdesktop) shift; cmd_rdesktop "$@" ;;
    drive-read) shift; cmd_drive_read "$@" ;;
    chansrv-log) shift; cmd_chansrv_log "$@" ;;
    *) die_usage "usage: $0 install | server ... | xclip ... | rdesktop ... | drive-read ... | chansrv-log ... (see header)" ;;
esac
