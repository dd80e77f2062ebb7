#!/usr/bin/env bash
# Benchmarks, run by hand (not part of CI). Needs root.
#
# 1. Single-core memcpy bandwidth of this machine, measured in the same run
#    (target/release/membw: 256 MiB, pre-faulted buffers, best of 8).
# 2. For SIZE in 256 and 1024 MiB: wl-memhog SIZE is dumped into a tmpfs
#    directory (/dev/shm/stasis-bench.XXXX) and restored with -d. Throughput
#    is SIZE / wall-clock time of the stasis command, compared to memcpy.
#    The same again into a tmpfs the bench mounts itself with
#    huge=within_size (rows "huge-page tmpfs"; unmounted at the end): the
#    recommended images dir, whose 2 MiB pages spare the page cache most of
#    its per-page work.
# 3. wl-small (a tiny process): dump and restore times, median of 5 runs.
# 4. wl-fdtree 100 50 (100 processes holding 50 fds of mixed kinds each):
#    dump (kill mode) and restore times per process (wall time / 100),
#    median of 5 runs. The restore starts once every killed process is gone
#    (init may take a second to reap 100 orphans: not restore work).
#
# 5. `stasis run -d` of a busybox container until its process runs, against
#    `runc run -d` in the same run (median of 5 each).
#
# 5b. ckpt: `stasis checkpoint` and `stasis restore -d` of an idle busybox
#    container end to end (median of 5 each; target: each under 100 ms).
#
# 5c. shim: under a private containerd 1.6, `ctr run -d` until the task is
#    RUNNING and `ctr task checkpoint` with containerd-shim-stasis-v2
#    (--runtime io.containerd.stasis.v2) against the stock runc shim with
#    stasis as its runtime (--runc-binary), same run (median of 3 each).
#
# 6. container: a 100-process busybox container (pivot_root, own mount/pid/
#    uts/ipc namespaces, own cgroup2 cgroup): freeze-to-frozen latency of
#    --freeze-cgroup, dump and restore (--root) times.
#
# `hack/bench.sh fdtree` (or mem, small, runtime, ckpt, shim, container) runs only that part.
#
# Times are wall-clock around the whole `stasis` command (process start
# included), taken by target/release/timeit. When `--display-stats` prints CRIU-style
# statistics, the frozen time is shown as well.
#
# Targets: dump and restore >= 40% of memcpy bandwidth; small process <= 5 ms
# each way; fd tree <= 1 ms per process each way.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { printf 'bench: %s\n' "$*" >&2; exit 1; }
note() { printf 'bench: %s\n' "$*" >&2; }

[[ $(id -u) -eq 0 ]] || die "needs root"
only=${1:-all}
want() { [[ $only == all || $only == "$1" ]]; }

note "building (release)"
bash hack/build.sh --quiet -p stasis-shim -p stasis-shim-v2 -p stasis-integration
T=$PWD/target/release
STASIS=${STASIS_BIN:-$T/stasis}
[[ -x $STASIS ]] || die "no $STASIS (build it, or set STASIS_BIN)"

work=$(mktemp -d /dev/shm/stasis-bench.XXXX)
pids=()
huge_mnt="" # the huge-page tmpfs this run mounted, if any
cleanup() {
    local p
    for p in "${pids[@]}"; do
        if [[ -e /proc/$p ]] && grep -q '^wl-' "/proc/$p/comm" 2>/dev/null; then
            kill -9 "$p" 2>/dev/null || true
        fi
    done
    if [[ -n $huge_mnt ]]; then
        umount "$huge_mnt" 2>/dev/null || umount -l "$huge_mnt" 2>/dev/null || true
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
    return 1
}

wait_gone() { # PID
    local i
    for ((i = 0; i < 1000; i++)); do
        [[ -e /proc/$1 ]] || return 0
        sleep 0.01
    done
    return 1
}

# start NAME ARGS... -> sets $state and $pid
start() {
    local name=$1
    shift
    state=$(mktemp -d "$work/$name.XXXX")
    setsid "$T/$name" "$state" "$@" >"$state/stdout" 2>"$state/stderr" </dev/null &
    disown "$!" # no "Killed" job notices when the dump kills it
    wait_for "$state/ready" 120 || die "$name did not get ready"
    pid=$(<"$state/ready")
    pids+=("$pid")
}

# Frozen time (ms) from CRIU-style --display-stats output, or "-".
frozen_ms() {
    awk '/^Frozen time:/ { printf "%.1f", $3 / 1000; found = 1 } END { if (!found) printf "-" }' "$1"
}

membw=$("$T/membw" 256 8 2>/dev/null | awk '/^memcpy_gbps/ { print $2 }')
[[ -n $membw ]] || die "membw printed nothing"
note "memcpy: $membw GB/s"

rows=()
row() { rows+=("$(printf '| %s | %s | %s | %s | %s | %s |' "$@")"); }
pct() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f%%", 100 * a / b }'; }
gbps() { awk -v mib="$1" -v ms="$2" 'BEGIN { printf "%.2f", mib * 1048576 / (ms / 1000) / 1e9 }'; }
meets() { # VALUE OP LIMIT ("-" as VALUE: not measured)
    awk -v a="$1" -v op="$2" -v b="$3" 'BEGIN {
        if (a == "-") { print "no"; exit }
        ok = (op == ">=") ? (a + 0 >= b + 0) : (a + 0 <= b + 0); print ok ? "yes" : "no" }'
}

row "memcpy, 1 core" "-" "$membw GB/s" "100%" "-" "-"

sizes=(256 1024)
want mem || sizes=()
dirs=("$work")
if ((${#sizes[@]})); then
    # Our own tmpfs with 2 MiB pages (never a mount this run did not make).
    mkdir "$work/huge"
    if mount -t tmpfs -o huge=within_size,size=3g,mode=0700 stasis-bench-huge "$work/huge"; then
        huge_mnt=$work/huge
        dirs+=("$huge_mnt")
    else
        note "could not mount a huge=within_size tmpfs: huge-page rows skipped"
    fi
fi
for size in "${sizes[@]}"; do
    for dir in "${dirs[@]}"; do
        where=""
        [[ $dir == "$work" ]] || where=", huge-page tmpfs"
        start wl-memhog "$size"
        img=$dir/img-$size
        mkdir "$img"
        if "$T/timeit" "$work/t" "$STASIS" criu dump -t "$pid" -D "$img" --display-stats >"$work/dump-$size.out" 2>&1; then
            d_ms=$(<"$work/t")
            wait_gone "$pid" || die "pid $pid still there after dump"
            d_gbps=$(gbps "$size" "$d_ms")
            row "dump $size MiB$where" "$d_ms ms (frozen $(frozen_ms "$work/dump-$size.out") ms)" "$d_gbps GB/s" \
                "$(pct "$d_gbps" "$membw")" ">= 40%" "$(meets "$d_gbps" ">=" "$(awk -v m="$membw" 'BEGIN { print 0.4 * m }')")"
            if "$T/timeit" "$work/t" "$STASIS" criu restore -D "$img" -d --pidfile "$work/pid-$size" >"$work/restore-$size.out" 2>&1; then
                r_ms=$(<"$work/t")
                r_gbps=$(gbps "$size" "$r_ms")
                touch "$state/check"
                verdict="no result"
                if wait_for "$state/result.root" 60; then verdict=$(<"$state/result.root"); fi
                row "restore $size MiB$where" "$r_ms ms (self-check: $verdict)" "$r_gbps GB/s" \
                    "$(pct "$r_gbps" "$membw")" ">= 40%" "$(meets "$r_gbps" ">=" "$(awk -v m="$membw" 'BEGIN { print 0.4 * m }')")"
                wait_gone "$pid" || kill -9 "$pid" 2>/dev/null || true
            else
                row "restore $size MiB$where" "failed: $(tail -n 1 "$work/restore-$size.out")" "-" "-" ">= 40%" "no"
            fi
        else
            row "dump $size MiB$where" "failed: $(tail -n 1 "$work/dump-$size.out")" "-" "-" ">= 40%" "no"
            kill -9 "$pid" 2>/dev/null || true
            wait_gone "$pid" || true
        fi
        rm -rf "$img"
    done
done

median() { sort -n | awk 'NF { v[++n] = $1 } END { if (n == 0) print "-"; else print v[int((n + 1) / 2)] }'; }
dumps=()
restores=()
fails=0
if want small; then
    for run in 1 2 3 4 5; do
        start wl-small
        img=$work/img-small-$run
        mkdir "$img"
        if ! "$T/timeit" "$work/t" "$STASIS" criu dump -t "$pid" -D "$img" >"$work/small-dump.out" 2>&1; then
            note "small run $run: dump failed: $(tail -n 1 "$work/small-dump.out")"
            fails=$((fails + 1))
            kill -9 "$pid" 2>/dev/null || true
            wait_gone "$pid" || true
            continue
        fi
        dumps+=("$(<"$work/t")")
        wait_gone "$pid" || die "pid $pid still there after dump"
        if ! "$T/timeit" "$work/t" "$STASIS" criu restore -D "$img" -d --pidfile "$work/pid-small" >"$work/small-restore.out" 2>&1; then
            note "small run $run: restore failed: $(tail -n 1 "$work/small-restore.out")"
            fails=$((fails + 1))
            continue
        fi
        restores+=("$(<"$work/t")")
        touch "$state/check"
        wait_for "$state/result.root" 10 || note "small run $run: no self-check result"
        wait_gone "$pid" || kill -9 "$pid" 2>/dev/null || true
        rm -rf "$img"
    done
    d_med=$(printf '%s\n' "${dumps[@]}" | median)
    r_med=$(printf '%s\n' "${restores[@]}" | median)
    row "dump small (median of ${#dumps[@]})" "$d_med ms" "-" "-" "<= 5 ms" \
        "$(meets "$d_med" "<=" 5)"
    row "restore small (median of ${#restores[@]})" "$r_med ms" "-" "-" "<= 5 ms" \
        "$(meets "$r_med" "<=" 5)"
fi

# fd tree: N processes x M fds, per-process times, median of 5 runs (this
# VM is noisy from run to run).
fdtree_n=100
fdtree_m=50
if want fdtree; then
    dumps=()
    restores=()
    verdicts=()
    for run in 1 2 3 4 5; do
        start wl-fdtree "$fdtree_n" "$fdtree_m"
        tree_pids=$(pgrep -s "$pid" || true) # its session: the whole tree
        img=$work/img-fdtree-$run
        mkdir "$img"
        if ! "$T/timeit" "$work/t" "$STASIS" criu dump -t "$pid" -D "$img" >"$work/fdtree-dump.out" 2>&1; then
            note "fdtree run $run: dump failed: $(tail -n 1 "$work/fdtree-dump.out")"
            kill -9 -- "-$pid" 2>/dev/null || true # its whole session
            wait_gone "$pid" || true
            continue
        fi
        dumps+=("$(<"$work/t")")
        # Every killed process must be gone (reaped by init, which can take
        # a while here) before the restore: it needs their pids.
        for p in $tree_pids; do
            wait_gone "$p" || die "pid $p still there after dump"
        done
        if ! "$T/timeit" "$work/t" "$STASIS" criu restore -D "$img" -d --pidfile "$work/pid-fdtree" >"$work/fdtree-restore.out" 2>&1; then
            note "fdtree run $run: restore failed: $(tail -n 1 "$work/fdtree-restore.out")"
            continue
        fi
        restores+=("$(<"$work/t")")
        touch "$state/check"
        v="no result"
        if wait_for "$state/result.root" 60; then v=$(<"$state/result.root"); fi
        verdicts+=("$v")
        [[ $v == ok ]] || note "fdtree run $run: self-check: $v"
        wait_gone "$pid" || kill -9 -- "-$pid" 2>/dev/null || true
        rm -rf "$img"
    done
    per_proc() { awk -v ms="$1" -v n="$fdtree_n" 'BEGIN { if (ms == "-") print "-"; else printf "%.2f", ms / n }'; }
    d_med=$(printf '%s\n' "${dumps[@]}" | median)
    r_med=$(printf '%s\n' "${restores[@]}" | median)
    d_pp=$(per_proc "$d_med")
    r_pp=$(per_proc "$r_med")
    nok=0
    for v in "${verdicts[@]}"; do [[ $v == ok ]] && nok=$((nok + 1)); done
    row "dump $fdtree_n procs x $fdtree_m fds (median of ${#dumps[@]})" \
        "$d_med ms = $d_pp ms/process" "-" "-" "<= 1 ms/process" "$(meets "$d_pp" "<=" 1)"
    row "restore $fdtree_n procs x $fdtree_m fds (median of ${#restores[@]}, self-check ok $nok)" \
        "$r_med ms = $r_pp ms/process" "-" "-" "<= 1 ms/process" "$(meets "$r_pp" "<=" 1)"
fi

# OCI runtime: `run -d` of a busybox-static container (returns once the
# container's process runs), stasis and runc alternately on the same bundle,
# median of 5 each. Teardown (kill + delete) is not timed.
if want runtime; then
    if command -v runc >/dev/null && [[ -x /bin/busybox ]]; then
        b=$work/bundle
        mkdir -p "$b"/rootfs/{bin,dev,etc,proc,sys,tmp,root}
        cp /bin/busybox "$b/rootfs/bin/busybox"
        for a in $(/bin/busybox --list); do [[ $a == busybox ]] || ln -sf busybox "$b/rootfs/bin/$a"; done
        "$STASIS" spec --bundle "$b"
        jq '.process.terminal=false | .process.args=["sleep","1000"]' "$b/config.json" >"$b/c.json"
        mv "$b/c.json" "$b/config.json"
        s_runs=() r_runs=()
        for i in 1 2 3 4 5; do
            for rt in stasis runc; do
                if [[ $rt == stasis ]]; then bin=$STASIS; else bin=runc; fi
                root=$work/rt-$rt
                id=bench-$rt-$i-$$
                if "$T/timeit" "$work/t" "$bin" --root "$root" run -d --bundle "$b" "$id" </dev/null >"$work/run-$rt.out" 2>&1; then
                    if [[ $rt == stasis ]]; then s_runs+=("$(<"$work/t")"); else r_runs+=("$(<"$work/t")"); fi
                else
                    note "$rt run -d failed: $(tail -n 1 "$work/run-$rt.out")"
                fi
                "$bin" --root "$root" delete --force "$id" >/dev/null 2>&1 || true
            done
        done
        s_med=$(printf '%s\n' "${s_runs[@]}" | median)
        r_med=$(printf '%s\n' "${r_runs[@]}" | median)
        row "stasis run -d to running (median of ${#s_runs[@]})" "$s_med ms (runc run -d: $r_med ms)" "-" "-" \
            "<= runc" "$(meets "$s_med" "<=" "$r_med")"
    else
        note "runtime: runc or busybox-static missing, skipped"
    fi
fi

# OCI checkpoint/restore: an idle busybox container (`sleep 1000`, started
# with `stasis run -d`) checkpointed (kill mode) and restored as a new
# container with `stasis restore -d`, end to end, median of 5 each. The
# restore starts once the checkpointed init is gone (reaping it is not
# restore work). podman with CRIU takes over a second for each.
if want ckpt; then
    if [[ -x /bin/busybox ]]; then
        b=$work/ck-bundle
        mkdir -p "$b"/rootfs/{bin,dev,etc,proc,sys,tmp,root}
        cp /bin/busybox "$b/rootfs/bin/busybox"
        for a in $(/bin/busybox --list); do [[ $a == busybox ]] || ln -sf busybox "$b/rootfs/bin/$a"; done
        "$STASIS" spec --bundle "$b"
        jq '.process.terminal=false | .process.args=["sleep","1000"]' "$b/config.json" >"$b/c.json"
        mv "$b/c.json" "$b/config.json"
        root=$work/ck-root
        c_runs=() r_runs=()
        for i in 1 2 3 4 5; do
            id=bench-ck-$i-$$
            "$STASIS" --root "$root" run -d --bundle "$b" "$id" </dev/null >/dev/null 2>&1 || die "stasis run -d $id failed"
            cpid=$("$STASIS" --root "$root" state "$id" | jq .pid)
            img=$work/ck-img-$i
            if "$T/timeit" "$work/t" "$STASIS" --root "$root" checkpoint --image-path "$img" "$id" \
                </dev/null >"$work/ck.out" 2>&1; then
                c_runs+=("$(<"$work/t")")
                wait_gone "$cpid" || die "pid $cpid still there after checkpoint"
                if "$T/timeit" "$work/t" "$STASIS" --root "$root" restore -d --image-path "$img" \
                    --bundle "$b" "$id" </dev/null >"$work/ck-r.out" 2>&1; then
                    if "$STASIS" --root "$root" state "$id" | grep '"running"' >/dev/null; then
                        r_runs+=("$(<"$work/t")")
                    else
                        note "ckpt: restored container $id is not running"
                    fi
                else
                    note "stasis restore failed: $(tail -n 1 "$work/ck-r.out")"
                fi
            else
                note "stasis checkpoint failed: $(tail -n 1 "$work/ck.out")"
            fi
            "$STASIS" --root "$root" delete --force "$id" >/dev/null 2>&1 || true
        done
        c_med=$(printf '%s\n' "${c_runs[@]}" | median)
        r_med=$(printf '%s\n' "${r_runs[@]}" | median)
        row "stasis checkpoint, idle busybox container (median of ${#c_runs[@]})" "$c_med ms" "-" "-" \
            "< 100 ms" "$(meets "$c_med" "<=" 100)"
        row "stasis restore -d, idle busybox container (median of ${#r_runs[@]})" "$r_med ms" "-" "-" \
            "< 100 ms" "$(meets "$r_med" "<=" 100)"
    else
        note "ckpt: busybox-static missing, skipped"
    fi
fi

# shim: ctr run -d to RUNNING and ctr task checkpoint, our shim against the
# runc shim running stasis, in one private containerd.
if want shim; then
    if command -v containerd >/dev/null && command -v ctr >/dev/null && command -v umoci >/dev/null && [[ -x /bin/busybox ]]; then
        cd_dir=$work/ctrd
        mkdir -p "$cd_dir/opt/bin" "$work/img"
        ln -sf "$T/containerd-shim-stasis-v2" "$cd_dir/opt/bin/"
        cat >"$cd_dir/config.toml" <<EOC
version = 2
root = "$cd_dir/root"
state = "$cd_dir/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$cd_dir/containerd.sock"
[ttrpc]
  address = "$cd_dir/containerd.sock.ttrpc"
[metrics]
  address = ""
[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$cd_dir/opt"
EOC
        containerd --config "$cd_dir/config.toml" </dev/null >"$cd_dir/log" 2>&1 &
        cd_pid=$!
        wait_for "$cd_dir/containerd.sock" 30 || die "containerd did not start"
        ns=bench-$$
        C=(timeout 60 ctr --address "$cd_dir/containerd.sock" -n "$ns")
        (
            cd "$work/img"
            mkdir -p rfs/{bin,dev,etc,proc,sys,tmp,root}
            cp /bin/busybox rfs/bin/
            for a in $(/bin/busybox --list); do [[ $a == busybox ]] || ln -sf busybox "rfs/bin/$a"; done
            umoci init --layout l && umoci new --image l:bb && umoci unpack --image l:bb bb
            cp -a rfs/. bb/rootfs/ && umoci repack --image l:bb bb
            umoci config --image l:bb --config.cmd sh --config.cmd -c \
                --config.cmd 'i=0; while true; do i=$((i+1)); echo $i >/tmp/tick; sleep 0.2; done' \
                --config.env PATH=/bin --architecture amd64 --os linux
            umoci gc --layout l && tar -C l -cf bb.tar oci-layout index.json blobs
        ) >/dev/null 2>&1 || die "shim: umoci image failed"
        "${C[@]}" images import --base-name localhost/bb "$work/img/bb.tar" >/dev/null
        for how in shim runc; do
            r_runs=() k_runs=()
            for i in 1 2 3; do
                id=bench-$how-$i-$$
                if [[ $how == shim ]]; then
                    opts=(--runtime io.containerd.stasis.v2)
                else
                    opts=(--runc-binary "$STASIS")
                fi
                t0=$(date +%s%N)
                "${C[@]}" run -d "${opts[@]}" localhost/bb:bb "$id" </dev/null >/dev/null 2>&1 || {
                    note "shim: ctr run ($how) failed"
                    continue
                }
                for ((j = 0; j < 1000; j++)); do
                    "${C[@]}" task ls 2>/dev/null | grep -q "^$id .*RUNNING" && break
                    sleep 0.005
                done
                r_runs+=("$((($(date +%s%N) - t0) / 1000000))")
                sleep 0.5
                t0=$(date +%s%N)
                if "${C[@]}" task checkpoint "$id" >/dev/null 2>"$work/shim-ck.err"; then
                    k_runs+=("$((($(date +%s%N) - t0) / 1000000))")
                else
                    note "shim: ctr task checkpoint ($how) failed: $(tail -n 1 "$work/shim-ck.err")"
                fi
                "${C[@]}" task kill -s KILL "$id" >/dev/null 2>&1 || true
                sleep 0.3
                "${C[@]}" task rm -f "$id" >/dev/null 2>&1 || true
                "${C[@]}" c rm "$id" >/dev/null 2>&1 || true
            done
            label="containerd-shim-stasis-v2"
            [[ $how == runc ]] && label="runc shim + stasis runtime"
            row "ctr run -d to RUNNING, $label (median of ${#r_runs[@]})" \
                "$(printf '%s\n' "${r_runs[@]}" | median) ms" "-" "-" "-" "-"
            row "ctr task checkpoint, $label (median of ${#k_runs[@]})" \
                "$(printf '%s\n' "${k_runs[@]}" | median) ms" "-" "-" "-" "-"
        done
        for i in $("${C[@]}" images ls -q); do "${C[@]}" images rm "$i" >/dev/null 2>&1 || true; done
        kill "$cd_pid" 2>/dev/null || true
        wait "$cd_pid" 2>/dev/null || true
        rm -rf "/run/containerd/runc/$ns" /tmp/ctd-checkpoint* 2>/dev/null || true
    else
        note "shim: containerd, ctr, umoci or busybox-static missing, skipped"
    fi
fi

# container: a busybox rootfs entered with pivot_root by ct-init in new
# mount/pid/uts/ipc namespaces, 100 processes, in a cgroup2 cgroup made here
# (removed after): freeze-to-frozen latency of --freeze-cgroup, and the
# dump (kill mode) and restore (--root into a copy of the rootfs) times of
# the whole container.
ct_n=100
if want container; then
    cg2=$(awk '{ for (i = 7; i <= NF; i++) if ($i == "-") { if ($(i + 1) == "cgroup2") print $5; break } }' /proc/self/mountinfo | head -n 1)
    [[ -n $cg2 && -x /bin/busybox ]] || die "container bench needs a cgroup2 mount and /bin/busybox"
    ct_cg=$cg2/stasis-bench-$$
    ct_cleanup() {
        if [[ -d $ct_cg ]]; then
            echo 0 >"$ct_cg/cgroup.freeze" 2>/dev/null || true
            echo 1 >"$ct_cg/cgroup.kill" 2>/dev/null || true
            for ((i = 0; i < 500; i++)); do
                [[ -z $(cat "$ct_cg/cgroup.procs" 2>/dev/null) ]] && break
                sleep 0.01
            done
            rmdir "$ct_cg" 2>/dev/null || true
        fi
        cleanup
    }
    trap ct_cleanup EXIT
    mkdir "$ct_cg"
    rfs=$work/ct-rootfs
    mkdir -p "$rfs"/{bin,dev,proc,tmp,etc,ro}
    cp /bin/busybox "$rfs/bin/"
    for a in sh sleep; do ln -s busybox "$rfs/bin/$a"; done
    cat >"$rfs/ct.sh" <<'CT'
n=1
while [ $n -lt 100 ]; do sleep 1000 & n=$((n + 1)); done
i=0
while :; do i=$((i + 1)); echo $i >/tick; sleep 0.05; done
CT
    setsid sh -c "echo \$\$ >$ct_cg/cgroup.procs && exec unshare --mount --pid --fork --uts --ipc --propagation private $T/ct-init $rfs bench-ct /bin/sh /ct.sh" \
        </dev/null >"$work/ct.out" 2>&1 &
    upid=$!
    disown "$upid"
    wait_for "$rfs/tick" 30 || die "container did not start: $(cat "$work/ct.out")"
    init=$(awk '{ print $1 }' "/proc/$upid/task/$upid/children")
    for ((i = 0; i < 1000; i++)); do
        [[ $(wc -l <"$ct_cg/cgroup.procs") -ge $((ct_n + 1)) ]] && break
        sleep 0.01
    done
    img=$work/img-ct
    mkdir "$img"
    if "$T/timeit" "$work/t" "$STASIS" criu dump -t "$init" -D "$img" --freeze-cgroup "$ct_cg" \
        -v4 -o "$work/ct-dump.log" >"$work/ct-dump.out" 2>&1; then
        d_ms=$(<"$work/t")
        lat=$(sed -n 's/.*cgroup frozen.*latency=\([^ ]*\).*/\1/p' "$work/ct-dump.log" | head -n 1)
        row "freeze $ct_n-process container (cgroup.freeze to frozen 1)" "${lat:--}" "-" "-" "-" "-"
        row "dump $ct_n-process container (mounts, namespaces, cgroup)" "$d_ms ms" "-" "-" "-" "-"
        for ((i = 0; i < 1000; i++)); do
            [[ -z $(cat "$ct_cg/cgroup.procs") ]] && break
            sleep 0.01
        done
        cp -a "$rfs" "$rfs-2"
        last=$(<"$rfs/tick")
        if "$T/timeit" "$work/t" "$STASIS" criu restore -D "$img" -d --root "$rfs-2" \
            --pidfile "$work/pid-ct" >"$work/ct-restore.out" 2>&1; then
            r_ms=$(<"$work/t")
            v="counter stuck"
            for ((i = 0; i < 500; i++)); do
                if [[ $(cat "$rfs-2/tick" 2>/dev/null) -gt $last ]]; then v=ok; break; fi
                sleep 0.01
            done
            row "restore $ct_n-process container (--root copy; self-check: $v)" "$r_ms ms" "-" "-" "-" "-"
        else
            row "restore $ct_n-process container" "failed: $(tail -n 1 "$work/ct-restore.out")" "-" "-" "-" "-"
        fi
    else
        row "dump $ct_n-process container" "failed: $(tail -n 1 "$work/ct-dump.out")" "-" "-" "-" "-"
    fi
    ct_cleanup
    trap cleanup EXIT
fi

echo
echo "stasis benchmark, $(uname -r), $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)"
echo
echo "| Measurement | Time | Throughput | vs memcpy | Target | Met |"
echo "|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
if ((fails)); then
    echo
    echo "($fails small-process runs failed; see the notes above)"
fi
