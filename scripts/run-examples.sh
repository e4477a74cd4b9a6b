#!/usr/bin/env bash
# Usage: scripts/run-examples.sh [EXAMPLE ...]   (default: every folder under Examples/)
# Builds each example package under Examples/ and runs it briefly against `shmring pub`: the
# example attaches, a client asks its TCP server once while messages flow, and the run must end
# with every message received. Called by scripts/test, so that CI keeps the examples working.
# Each example is its own package (the library never depends on it): it builds in its folder.
set -euo pipefail
cd "$(dirname "$0")/.."
swift build -c release --product shmring >/dev/null
shmring="$PWD/.build/release/shmring"
count=300000
examples=("$@")
[ ${#examples[@]} -gt 0 ] || examples=($(ls Examples))
for example in "${examples[@]}"; do
    dir="Examples/$example"
    echo "== example $example: build"
    (cd "$dir" && swift build --product "$example" 2>&1 | tail -1)
    binary="$(cd "$dir" && swift build --product "$example" --show-bin-path)/$example"
    key="example-$example-$$"
    out="$(mktemp)"
    # The example waits (up to 10 s) for the producer; the producer waits for the example.
    timeout 120 "$binary" "$key" --count "$count" >"$out" &
    example_pid=$!
    timeout 120 "$shmring" pub "$key" --size 64 --count "$count" --rate 100000 --wait-consumers 1 2>/dev/null &
    pub_pid=$!
    # Ask the example's server once, while the feed flows (the first line of its output names
    # the port).
    for _ in $(seq 100); do grep -q "listening on" "$out" && break; sleep 0.1; done
    port="$(sed -n 's/^listening on 127.0.0.1:\([0-9]*\)$/\1/p' "$out")"
    [ -n "$port" ] || { echo "example $example never listened: $(cat "$out")"; exit 1; }
    sleep 0.5
    exec 3<>"/dev/tcp/127.0.0.1/$port"
    read -r status <&3 || true
    exec 3<&-
    wait "$example_pid" || { echo "example $example failed: $(cat "$out")"; exit 1; }
    wait "$pub_pid" || true
    echo "   server answered: $status"
    echo "   $(tail -1 "$out")"
    grep -q "^received $count messages" "$out" || { echo "example $example lost messages"; exit 1; }
    case "$status" in messages=*) ;; *) echo "example $example's server did not answer"; exit 1 ;; esac
    rm -f "$out"
done
