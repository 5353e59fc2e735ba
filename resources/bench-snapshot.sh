#!/bin/bash
# Snapshot benchmark inside an emulated host (run with -icount for repeatable figures): vmm's
# PUT /snapshot/create and PUT /snapshot/load against Debian's QEMU (`migrate` to a file through
# exec:, then `-incoming` from it), for a 1-vCPU guest that has touched 256 MiB, at 512 MiB and
# at 2 GiB of guest memory. The methods are those Firecracker and QEMU were measured with in this
# setup (see docs/testing.md). Prints "BENCH snap-<vmm|qemu>-<MiB> <run> key=value..." lines that
# `cargo xtask bench` tabulates; a figure not measured is printed empty (`key=`), never as 0.
set -u
: "${GUEST_KERNEL:?}" "${GUEST_INITRD:?}"
runs=${BENCH_RUNS:-3}
touch_mib=256
sizes="512 2048"
cmdline="reboot=k panic=1 quiet"
qemu=(qemu-system-aarch64 -accel kvm -M virt,gic-version=3 -cpu host -smp 1 -nodefaults
    -no-reboot -display none -serial stdio -global virtio-mmio.force-legacy=false)

say() { echo "bench-snapshot: $*"; }

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }

# api SOCK METHOD PATH [BODY]: one API call with curl; sets API_CODE and API_US (curl's
# time_total in µs, empty unless the call succeeded). The answer's body is in /tmp/api.out.
api() {
    local args=(-s -o /tmp/api.out -w '%{http_code} %{time_total}' --unix-socket "$1" -X "$2")
    [ $# -ge 4 ] && args+=(-H 'Content-Type: application/json' -d "$4")
    local r t
    r=$(curl "${args[@]}" "http://localhost$3")
    API_CODE=${r%% *} API_US=""
    t=${r#* }
    t=${t/./}
    if [[ $API_CODE == 20? && $t =~ ^[0-9]+$ ]]; then
        API_US=$((10#$t))
    else
        say "$2 $3 answered ${API_CODE:-nothing}: $(cat /tmp/api.out 2>/dev/null)"
    fi
}

wait_path() {
    local i
    for i in $(seq 400); do
        [ -S "$1" ] && return 0
        sleep 0.05
    done
    say "no socket $1"
    return 1
}

# wait_line FD PATTERN [SECONDS]: reads console lines from FD until one contains PATTERN.
wait_line() {
    local line
    while IFS= read -r -t "${3:-900}" line <&"$1"; do
        case "$line" in *"$2"*) return 0 ;; esac
    done
    say "no console line with '$2'"
    return 1
}

# round_trip IN OUT: sends a command to the guest's shell and sets RT_END to the time of its
# reply line (the echoed command line reads ANS$((1+1)), only the reply reads ANS2).
round_trip() {
    RT_END=""
    printf 'echo ANS$((1+1))\n' >&"$1"
    wait_line "$2" ANS2 60 && RT_END=${EPOCHREALTIME/./}
}

# prepare IN OUT: has the guest fill $touch_mib MiB of its memory, then sets BASELINE_US to
# the console round trip of the running guest.
prepare() {
    BASELINE_US=""
    printf 'dmesg -n 1; vmm-guest-tool touch %d &\n' "$touch_mib" >&"$1"
    wait_line "$2" "TOUCHED $touch_mib" || return 1
    sleep 1
    local t0=${EPOCHREALTIME/./}
    round_trip "$1" "$2" && BASELINE_US=$((RT_END - t0))
}

# rss_split PID GUEST_KIB: Firecracker's way of measuring the restored VMM's overhead: the Rss
# of the smaps entries smaller than guest memory; the rest is guest memory. Empty when no
# mapping of guest memory's size was found.
rss_split() {
    [ -r "/proc/$1/smaps" ] || { echo "overhead_kib= guest_rss_kib="; return; }
    awk -v g="$2" '/^Size:/{size=$2} /^Rss:/{ if (size >= g) { guest += $2; found = 1 } else other += $2 }
        END { if (found) printf "overhead_kib=%d guest_rss_kib=%d", other, guest; else printf "overhead_kib= guest_rss_kib=" }' "/proc/$1/smaps"
}

# file_sizes PATH: "<bytes> <allocated bytes>", or nothing. (Not with awk: busybox awk's %d
# stops at 2^31 - 1.)
file_sizes() {
    local size blocks unit
    read -r size blocks unit <<< "$(stat -c '%s %b %B' "$1" 2>/dev/null)"
    [ -n "$unit" ] && echo "$size $((blocks * unit))"
}

# metric FILE NAME: the last value of a metric in vmm's metrics file.
metric() { grep -o "\"$2\": *[0-9]*" "$1" 2>/dev/null | tail -1 | grep -o '[0-9]*$'; }

# stop_console IN OUT PID: powers the guest off, drains its console, and sets STOP_RC to the
# VMM's exit status.
stop_console() {
    local line
    printf 'poweroff -f\n' >&"$1"
    while IFS= read -r -t 300 line <&"$2"; do :; done
    wait "$3"
    STOP_RC=$?
}

snap_vmm() {
    local mib=$1 run=$2 sock=/tmp/snap.sock state=/tmp/snap.state mem=/tmp/snap.mem
    local create_us="" create_metric_us="" state_bytes="" mem_bytes="" mem_alloc_bytes=""
    local nonzero_bytes="" load_us="" load_metric_us="" answer_us="" extra_us="" baseline_us=""
    local rss="overhead_kib= guest_rss_kib=" rc=""
    rm -f "$sock" "$state" "$mem" /tmp/snap-mc /tmp/snap-ml
    drop_caches
    coproc VM { exec vmm --api-sock "$sock" 2>/tmp/snap-c.err; }
    local pid=$VM_PID in=${VM[1]} out=${VM[0]}
    if wait_path "$sock"; then
        api "$sock" PUT /metrics '{"metrics_path": "/tmp/snap-mc"}'
        api "$sock" PUT /boot-source "{\"kernel_image_path\": \"$GUEST_KERNEL\", \"initrd_path\": \"$GUEST_INITRD\", \"boot_args\": \"console=ttyS0 $cmdline\"}"
        api "$sock" PUT /machine-config "{\"vcpu_count\": 1, \"mem_size_mib\": $mib}"
        api "$sock" PUT /actions '{"action_type": "InstanceStart"}'
    fi
    if wait_line "$out" GUEST_READY && prepare "$in" "$out"; then
        baseline_us=$BASELINE_US
        api "$sock" PATCH /vm '{"state": "Paused"}'
        sleep 0.5
        api "$sock" PUT /snapshot/create "{\"snapshot_type\": \"Full\", \"snapshot_path\": \"$state\", \"mem_file_path\": \"$mem\"}"
        create_us=$API_US
        api "$sock" PUT /actions '{"action_type": "FlushMetrics"}'
        create_metric_us=$(metric /tmp/snap-mc full_create_snapshot)
    fi
    kill -9 "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    if [ -n "$create_us" ]; then
        state_bytes=$(stat -c %s "$state")
        read -r mem_bytes mem_alloc_bytes <<< "$(file_sizes "$mem")"
        local pages
        pages=$(vmm-guest-tool nonzero "$mem" | awk '/^NONZERO_PAGES/{print $2}')
        [ -n "$pages" ] && nonzero_bytes=$((pages * 4096))

        rm -f "$sock"
        drop_caches
        coproc VM { exec vmm --api-sock "$sock" 2>/tmp/snap-l.err; }
        pid=$VM_PID in=${VM[1]} out=${VM[0]}
        if wait_path "$sock"; then
            api "$sock" PUT /metrics '{"metrics_path": "/tmp/snap-ml"}'
            api "$sock" PUT /snapshot/load "{\"snapshot_path\": \"$state\", \"mem_backend\": {\"backend_type\": \"File\", \"backend_path\": \"$mem\"}, \"resume_vm\": true}"
            local t_ret=${EPOCHREALTIME/./}
            load_us=$API_US
            if [ -n "$load_us" ] && round_trip "$in" "$out"; then
                answer_us=$((RT_END - t_ret))
                [ -n "$baseline_us" ] && extra_us=$((answer_us - baseline_us))
            fi
            rss=$(rss_split "$pid" $((mib * 1024)))
            api "$sock" PUT /actions '{"action_type": "FlushMetrics"}'
            load_metric_us=$(metric /tmp/snap-ml load_snapshot)
        fi
        stop_console "$in" "$out" "$pid"
        rc=$STOP_RC
    fi
    [ -n "$rc" ] || { say "vmm ${mib} MiB: no snapshot"; tail -5 /tmp/snap-c.err; rc=1; }
    [ "$rc" = 0 ] || tail -5 /tmp/snap-l.err 2>/dev/null
    echo "BENCH snap-vmm-$mib $run create_us=$create_us create_metric_us=$create_metric_us" \
        "state_bytes=$state_bytes mem_bytes=$mem_bytes mem_alloc_bytes=$mem_alloc_bytes" \
        "nonzero_bytes=$nonzero_bytes workload_bytes=$((touch_mib << 20)) load_us=$load_us" \
        "load_metric_us=$load_metric_us baseline_us=$baseline_us answer_us=$answer_us" \
        "answer_extra_us=$extra_us $rss exit=$rc"
    rm -f "$state" "$mem"
}

# QEMU's human monitor over one persistent connection: commands are written to a FIFO that
# socat reads (no process started per command, so a command's time starts when it is sent),
# and the answers are appended to /tmp/mon.out.
mon_open() {
    MON_PID=""
    rm -f /tmp/mon.in
    : > /tmp/mon.out
    mkfifo /tmp/mon.in
    wait_path "$1" || return 1
    socat -t 30 - "UNIX-CONNECT:$1" < /tmp/mon.in >> /tmp/mon.out 2>/dev/null &
    MON_PID=$!
    exec {MON}> /tmp/mon.in
}

mon_close() {
    [ -n "${MON_PID:-}" ] || return 0
    exec {MON}>&-
    wait "$MON_PID" 2>/dev/null
    MON_PID=""
}

mon() { printf '%s\n' "$1" >&"$MON"; }

# mon_until REGEX COMMAND [TRIES]: sends COMMAND every 20 ms until the answers match REGEX.
mon_until() {
    local i
    for i in $(seq "${3:-3000}"); do
        mon "$2"
        sleep 0.02
        grep -aqE "$1" /tmp/mon.out && return 0
    done
    say "QEMU's monitor never showed '$1'"
    return 1
}

snap_qemu() {
    local mib=$1 run=$2 file=/tmp/q.mig
    local create_us="" file_bytes="" file_alloc_bytes="" load_us="" running_us=""
    local answer_us="" extra_us="" baseline_us="" rss="overhead_kib= guest_rss_kib=" rc=""
    local boot=(-m "$mib" -kernel "$GUEST_KERNEL" -initrd "$GUEST_INITRD" -append "console=ttyAMA0 $cmdline")
    rm -f "$file" /tmp/qs.mon /tmp/qd.mon /tmp/qend
    drop_caches
    coproc VM { exec "${qemu[@]}" "${boot[@]}" -monitor unix:/tmp/qs.mon,server,nowait 2>/tmp/q.err; }
    local pid=$VM_PID in=${VM[1]} out=${VM[0]}
    if wait_line "$out" GUEST_READY && prepare "$in" "$out" && mon_open /tmp/qs.mon; then
        baseline_us=$BASELINE_US
        mon stop
        mon 'migrate_set_parameter max-bandwidth 100G'
        sleep 0.5
        mon "migrate -d \"exec:cat > $file\""
        if mon_until 'Migration status: (completed|failed)' 'info migrate' &&
            grep -aq 'Migration status: completed' /tmp/mon.out; then
            # QEMU's own figure, as for Firecracker's and QEMU's earlier measurement.
            local ms
            ms=$(grep -ao 'total time: [0-9]* ms' /tmp/mon.out | tail -1 | grep -o '[0-9][0-9]*')
            [ -n "$ms" ] && create_us=$((ms * 1000))
        fi
        mon quit
        mon_close
    fi
    kill -9 "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    if [ -n "$create_us" ]; then
        read -r file_bytes file_alloc_bytes <<< "$(file_sizes "$file")"
        printf '#!/bin/bash\ncat %s\necho ${EPOCHREALTIME/./} > /tmp/qend\n' "$file" > /tmp/qcat.sh
        chmod +x /tmp/qcat.sh
        drop_caches
        coproc VM { exec "${qemu[@]}" "${boot[@]}" -monitor unix:/tmp/qd.mon,server,nowait -incoming defer 2>/tmp/q.err; }
        pid=$VM_PID in=${VM[1]} out=${VM[0]}
        if mon_open /tmp/qd.mon && mon_until 'VM status' 'info status'; then
            : > /tmp/mon.out
            local t0=${EPOCHREALTIME/./}
            mon 'migrate_incoming "exec:/tmp/qcat.sh"'
            # The monitor does not answer while the stream loads; the source was paused, so
            # the guest comes up paused (not "paused (inmigrate)"), and `cont` runs it.
            if mon_until 'VM status: paused[^(]*$' 'info status'; then
                local end
                end=$(cat /tmp/qend 2>/dev/null)
                [ -n "$end" ] && load_us=$((end - t0))
                : > /tmp/mon.out
                mon cont
                if mon_until 'VM status: running' 'info status'; then
                    local t_run=${EPOCHREALTIME/./}
                    running_us=$((t_run - t0))
                    if round_trip "$in" "$out"; then
                        answer_us=$((RT_END - t_run))
                        [ -n "$baseline_us" ] && extra_us=$((answer_us - baseline_us))
                    fi
                fi
            fi
            rss=$(rss_split "$pid" $((mib * 1024)))
        fi
        stop_console "$in" "$out" "$pid"
        rc=$STOP_RC
        mon_close
    fi
    [ -n "$rc" ] || { say "QEMU ${mib} MiB: no migration file"; tail -5 /tmp/q.err; rc=1; }
    echo "BENCH snap-qemu-$mib $run create_us=$create_us file_bytes=$file_bytes" \
        "file_alloc_bytes=$file_alloc_bytes load_us=$load_us running_us=$running_us" \
        "baseline_us=$baseline_us answer_us=$answer_us answer_extra_us=$extra_us $rss exit=$rc"
    rm -f "$file"
}

have_qemu=""
command -v qemu-system-aarch64 >/dev/null && have_qemu=1
for run in $(seq "$runs"); do
    for mib in $sizes; do
        snap_vmm "$mib" "$run"
        # No QEMU in the host: no QEMU line, and xtask reports its figures missing.
        [ -n "$have_qemu" ] && snap_qemu "$mib" "$run"
    done
done
exit 0
