#!/usr/bin/env bash
# Builds the peers of `shmring bench --peers` (README.md): perf/peers/build.sh [SYSTEM ...]
# Systems: boost-mq zeromq qt-shm iceoryx (no argument: all four). Installs the Debian packages a
# system needs (only those missing; `apt-get update` once if an install fails) and builds
# perf/peers/bin/<system>; for iceoryx also bin/iceoryx.daemon (RouDi in the foreground) and its
# configuration. A failure prints one line `peers: <system>: <package or step>: <reason>` and the
# script goes on with the next system; the exit status is 1 if any system failed.
set -u

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin="$here/bin"
all=(boost-mq zeromq qt-shm iceoryx)
CXX=${CXX:-g++}
common=(-O2 -std=gnu++17 -Wall -Wextra -I"$root/Sources/CShmBench/include" -I"$root/Sources/CShmBench")

if [ $# -eq 0 ]; then systems=("${all[@]}"); else systems=("$@"); fi

packages_of() {
    case "$1" in
    boost-mq) echo "g++ libboost-dev" ;;
    zeromq) echo "g++ pkg-config libzmq3-dev" ;;
    qt-shm) echo "g++ pkg-config qt6-base-dev" ;;
    iceoryx) echo "g++ libiceoryx-posh-dev libiceoryx-hoofs-dev iceoryx" ;;
    esac
}

installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }

updated=0
failures=0
built=()

fail() {  # fail SYSTEM WHAT REASON
    echo "peers: $1: $2: $3"
    failures=$((failures + 1))
}

# Installs what `system` lacks; on failure prints the line and returns 1.
install_for() {
    local system=$1 missing=() package log reason
    for package in $(packages_of "$system"); do installed "$package" || missing+=("$package"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        fail "$system" "${missing[*]}" "not installed, and installing needs root (apt-get install ${missing[*]})"
        return 1
    fi
    log=$(mktemp)
    echo "peers: $system: installing ${missing[*]}"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >"$log" 2>&1; then
        if [ $updated -eq 0 ]; then
            updated=1
            echo "peers: $system: apt-get update"
            # A failed update is only noted: the install that follows decides.
            DEBIAN_FRONTEND=noninteractive apt-get update >"$log" 2>&1 \
                || echo "peers: $system: apt-get update failed: $(grep -E '^(E|W):' "$log" | head -1)"
        fi
        if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >"$log" 2>&1; then
            reason=$(grep -E '^E:' "$log" | head -1)
            fail "$system" "${missing[*]}" "${reason:-apt-get install failed}"
            rm -f "$log"
            return 1
        fi
    fi
    rm -f "$log"
    for package in "${missing[@]}"; do
        installed "$package" || { fail "$system" "$package" "still not installed after apt-get install"; return 1; }
    done
    return 0
}

# Runs one build step, its output in bin/<system>.log; on failure prints the line and returns 1.
step() {  # step SYSTEM WHAT COMMAND...
    local system=$1 what=$2 reason
    shift 2
    echo "+ $*" >>"$bin/$system.log"
    if ! "$@" >>"$bin/$system.log" 2>&1; then
        reason=$(grep -m1 -E 'error|Error|No such|not found' "$bin/$system.log")
        fail "$system" "$what" "${reason:-failed} (full output: $bin/$system.log)"
        return 1
    fi
}

build_boost_mq() {
    step boost-mq compile "$CXX" "${common[@]}" "$here/boost_mq.cpp" -o "$bin/boost-mq" -pthread -lrt
}

build_zeromq() {
    local flags
    flags=$(pkg-config --cflags --libs libzmq 2>>"$bin/zeromq.log") || { fail zeromq "pkg-config libzmq" "no libzmq.pc"; return 1; }
    # shellcheck disable=SC2086
    step zeromq compile "$CXX" "${common[@]}" "$here/zeromq.cpp" -o "$bin/zeromq" $flags
}

build_qt_shm() {
    local flags
    flags=$(pkg-config --cflags --libs Qt6Core 2>>"$bin/qt-shm.log") || { fail qt-shm "pkg-config Qt6Core" "no Qt6Core.pc"; return 1; }
    # Qt is built with -reduce-relocations: code that uses it must be position independent.
    # shellcheck disable=SC2086
    step qt-shm compile "$CXX" "${common[@]}" -fPIC "$here/qt_shm.cpp" -o "$bin/qt-shm" $flags
}

build_iceoryx() {
    local include roudi
    include=$(ls -d /usr/include/iceoryx/v* 2>/dev/null | sort -V | tail -1)
    [ -n "$include" ] || { fail iceoryx "headers" "no /usr/include/iceoryx/v*"; return 1; }
    roudi=$(command -v iox-roudi) || { fail iceoryx "iox-roudi" "not on PATH (package iceoryx)"; return 1; }
    step iceoryx compile "$CXX" "${common[@]}" -I"$include" "$here/iceoryx.cpp" -o "$bin/iceoryx" \
        -liceoryx_posh -liceoryx_hoofs -liceoryx_platform -pthread -lrt || return 1
    # RouDi's memory: one segment with pools for the bench's messages (16 to 4096 bytes plus
    # iceoryx's chunk header): 4096 chunks of 128 and of 1024 bytes, 2048 of 8192 bytes. A
    # publisher blocks at 256 queued chunks, so a run holds a few hundred at most.
    cat >"$bin/iceoryx-roudi.toml" <<'EOF'
# Written by perf/peers/build.sh: RouDi's memory for the iceoryx peer of `shmring bench --peers`.
[general]
version = 1

[[segment]]

[[segment.mempool]]
size = 128
count = 4096

[[segment.mempool]]
size = 1024
count = 4096

[[segment.mempool]]
size = 8192
count = 2048
EOF
    # RouDi in the foreground until SIGTERM (or SIGINT). RouDi exits with status 0 on SIGTERM and
    # removes its files (/dev/shm/iceoryx_mgmt, /dev/shm/<group>, /tmp/roudi, /tmp/roudi.lock).
    # But a client killed while it held a port's mutex blocks RouDi for good (iceoryx 2.0, issues
    # #325 and #1711), and then it ignores SIGTERM: so the script does not exec RouDi but waits for
    # it, passes SIGTERM on, SIGKILLs it 3 s later (before the bench's own SIGKILL, 5 s after its
    # SIGTERM) and removes what it leaves (~90 MB of /dev/shm; the next RouDi would clean that up
    # too). RouDi dies with the script (setpriv --pdeathsig), so no RouDi outlives a killed script.
    local setpriv=""
    command -v setpriv >/dev/null 2>&1 && setpriv="setpriv --pdeathsig KILL"
    cat >"$bin/iceoryx.daemon" <<EOF
#!/bin/sh
# Written by perf/peers/build.sh: iceoryx's RouDi daemon, which \`shmring bench --peers\` starts
# before the iceoryx runs and stops with SIGTERM afterwards (README.md).
here=\$(cd "\$(dirname "\$0")" && pwd)
$setpriv "$roudi" --config-file "\$here/iceoryx-roudi.toml" --log-level warning "\$@" &
roudi=\$!
stop() {
    kill -TERM "\$roudi" 2>/dev/null
    tenths=0
    while kill -0 "\$roudi" 2>/dev/null; do
        if [ \$tenths -ge 30 ]; then
            echo "iceoryx.daemon: RouDi did not stop within 3 s of SIGTERM (blocked by a killed client?): SIGKILL" >&2
            kill -KILL "\$roudi" 2>/dev/null
            wait "\$roudi"
            rm -f /dev/shm/iceoryx_mgmt "/dev/shm/\$(id -gn)" /tmp/roudi /tmp/roudi.lock /tmp/iox-unique-roudi.lock
            exit 0
        fi
        sleep 0.1
        tenths=\$((tenths + 1))
    done
    wait "\$roudi"
    exit 0
}
trap stop TERM INT
wait "\$roudi"
EOF
    chmod +x "$bin/iceoryx.daemon"
}

mkdir -p "$bin" || { echo "peers: all: mkdir $bin: failed"; exit 1; }
for system in "${systems[@]}"; do
    case "$system" in
    boost-mq | zeromq | qt-shm | iceoryx) ;;
    *)
        fail "$system" "system" "unknown (one of: ${all[*]})"
        continue
        ;;
    esac
    install_for "$system" || continue
    rm -f "$bin/$system" "$bin/$system.log"
    echo "peers: $system: building"
    if "build_${system//-/_}"; then
        built+=("$system")
        rm -f "$bin/$system.log"
    fi
done

if [ ${#built[@]} -gt 0 ]; then
    echo "peers: built ${built[*]} in $bin"
else
    echo "peers: built nothing"
fi
[ $failures -eq 0 ]
