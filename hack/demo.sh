#!/usr/bin/env bash
# Demo: checkpoint a counting process, show it is gone, restore it, and show
# that it carries on counting from where it stopped. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '%s\n' "$*"; }
step() { printf '\n== %s\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "needs root (checkpoint/restore uses ptrace and restores PIDs)"

step "set-up and release build"
bash hack/setup.sh
bash hack/build.sh --quiet -p stasis-shim -p stasis-integration
STASIS=${STASIS_BIN:-$PWD/target/release/stasis}
COUNTER=$PWD/target/release/wl-counter
[[ -x $STASIS ]] || die "no $STASIS after the build"

work=$(mktemp -d /tmp/stasis-demo.XXXXXX)
state=$work/state
img=$work/images
log=$work/counter.log
mkdir -p "$state" "$img"
pid=
cleanup() {
    # Kill the counter (original or restored) by its pid, if it is still ours.
    if [[ -n $pid && -e /proc/$pid ]] && grep -q '^wl-counter' "/proc/$pid/comm" 2>/dev/null; then
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

wait_for() { # FILE SECONDS
    local i
    for ((i = 0; i < $2 * 100; i++)); do
        [[ -e $1 ]] && return 0
        sleep 0.01
    done
    die "$1 did not appear within $2 s"
}

step "start wl-counter (prints 'count N' every 100 ms into $log)"
# setsid: the counter leads its own session, so it is a self-contained tree
# (no --shell-job needed). stdout is a file: no pipes in the checkpoint.
setsid "$COUNTER" "$state" >"$log" 2>"$work/counter.err" </dev/null &
disown "$!" # the shell still reaps it; no "Killed" job notice after the dump
wait_for "$state/ready" 5
pid=$(<"$state/ready")
say "counter pid: $pid"
sleep 1.5
say "--- log so far (last 5 lines):"
tail -n 5 "$log"

step "stasis criu dump -t $pid -D $img --display-stats"
"$STASIS" criu dump -t "$pid" -D "$img" --display-stats
for ((i = 0; i < 500; i++)); do [[ -e /proc/$pid ]] || break; sleep 0.01; done
if [[ -e /proc/$pid ]]; then
    die "pid $pid still exists after the dump"
fi
say "ps -p $pid:"
ps -p "$pid" || say "(no such process: pid $pid is gone)"
last_before=$(tail -n 1 "$log")
say "last line before the dump: $last_before"
say "images: $(du -sh "$img" | cut -f1) in $(find "$img" -type f | wc -l) files"
sleep 1
say "one second later the log still ends with: $(tail -n 1 "$log")"

step "stasis criu restore -D $img -d --pidfile $work/restore.pid"
"$STASIS" criu restore -D "$img" -d --pidfile "$work/restore.pid"
rpid=$(<"$work/restore.pid")
say "restored pid: $rpid (original: $pid)"
sleep 1
n_before=${last_before#count }
first_after=$(grep -m1 -x "count $((n_before + 1))" "$log" || echo "(missing)")
say "--- log now (last 5 lines):"
tail -n 5 "$log"
say ""
say "last count before dump:    $last_before"
say "first count after restore: $first_after"

step "let the restored counter check itself"
touch "$state/check"
wait_for "$state/result.root" 10
say "self-check: $(<"$state/result.root")"

step "clean up"
for ((i = 0; i < 200; i++)); do [[ -e /proc/$rpid ]] || break; sleep 0.01; done
pid=$rpid
say "done"
