#!/usr/bin/env bash
# Reproduces every table of BENCHMARKS.md's "Hub performance" section with one command:
#
#   bench/run.sh                      # the full suite (about 15 minutes)
#   bench/run.sh --only ingest --runs 5 --secs 10   # any `smarthub bench` option is passed through
#
# It installs what is missing (Debian's mosquitto with apt-get; stock rumqttd 0.20.0 with cargo install
# into target/bench-tools), builds smarthub in release mode, raises the open-file limit for the 10,000
# client test, and runs `smarthub bench`, which starts and stops every process it needs on free loopback
# ports and deletes its scratch files. The report goes to target/bench/hub-performance.md (Markdown) and
# target/bench/results.json (every run).
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS=target/bench-tools
RUMQTTD_VERSION=0.20.0

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    echo "bench/run.sh: installing Debian's mosquitto (apt-get)" >&2
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y mosquitto
    # The package starts a system-wide broker on port 1883; the bench starts its own on a free port, so stop
    # the one the install just started rather than leave it behind.
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet mosquitto 2>/dev/null; then
        as_root systemctl disable --now mosquitto || true
    fi
fi

if ! "$TOOLS/bin/rumqttd" --version 2>/dev/null | grep -q "$RUMQTTD_VERSION"; then
    echo "bench/run.sh: installing stock rumqttd $RUMQTTD_VERSION into $TOOLS (a few minutes, once)" >&2
    # rumqttd 0.20.0's own Cargo.lock pins metrics 0.22.1, which current Rust refuses (E0521, rust-lang/rust#141402):
    # try --locked first, then let cargo pick semver-compatible dependency versions (same rumqttd code).
    CARGO_TARGET_DIR="$TOOLS/build" cargo install rumqttd --version "$RUMQTTD_VERSION" --locked --root "$TOOLS" \
        || CARGO_TARGET_DIR="$TOOLS/build" cargo install rumqttd --version "$RUMQTTD_VERSION" --root "$TOOLS"
fi

cargo build --release --bin smarthub

# 10,000 idle clients need 10,000 descriptors in the client process and as many in the broker.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 12000 ]; then
    echo "bench/run.sh: the open-file limit is $(ulimit -n) (hard limit $(ulimit -Hn)); the 10,000-client test needs 12,000" >&2
    echo "  raise the hard limit (e.g. /etc/security/limits.conf) or pass --clients N" >&2
fi

export SMARTHUB_BENCH_COMMAND="bench/run.sh${*:+ $*}"
exec target/release/smarthub bench --rumqttd "$TOOLS/bin/rumqttd" "$@"
