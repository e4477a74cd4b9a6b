# Sourced by scripts/demo and scripts/test: installs what the build needs when it is missing.
#
# ShmRing needs the Swift toolchain (not installed here: see swift.org) and Debian's liburing-dev.
# Installs with apt-get, running `apt-get update` first when an install fails (a fresh machine has
# no package lists), and says clearly what to do where apt-get is absent.

shmring_need_package() {  # $1 = Debian package, $2 = a file it provides
    local package=$1 marker=$2
    [ -e "$marker" ] && return 0
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "error: $package is missing ($marker not found) and apt-get is not available." >&2
        echo "       Install $package (liburing headers and library) with your package manager." >&2
        exit 1
    fi
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "installing $package ..." >&2
    if ! $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$package" >/dev/null; then
        echo "apt-get install failed; running apt-get update and trying again" >&2
        $sudo apt-get update -q >/dev/null
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$package" >/dev/null
    fi
    [ -e "$marker" ] || { echo "error: $package installed but $marker is still missing" >&2; exit 1; }
}

if ! command -v swift >/dev/null 2>&1; then
    echo "error: the Swift toolchain (6.1 or later) is not on PATH." >&2
    exit 1
fi
shmring_need_package liburing-dev /usr/include/liburing.h
# The hot-path tests: callgrind, and objcopy to strip the DWARF 5 that valgrind 3.19 cannot read.
shmring_need_package valgrind /usr/bin/valgrind
# The wake-up protocol's model (Tests/Models/wakeup.pml) is checked with Spin.
shmring_need_package spin /usr/bin/spin
# System calls of a whole `shmring pub` run are counted with strace.
shmring_need_package strace /usr/bin/strace
shmring_need_package binutils /usr/bin/objcopy
