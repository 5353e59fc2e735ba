#!/bin/bash
# Live-migration benchmark inside one emulated host (run with -icount for repeatable figures):
# two VMM processes over loopback TCP, a 1-vCPU 1 GiB guest that touched 256 MiB, idle and with
# a dirtier rewriting 64 MiB with random-looking data, for vmm (`vmm receive`, `vmm send`) and
# for Debian's QEMU (`-incoming tcp:`, HMP `migrate` with the same downtime limit and the
# bandwidth cap lifted), plus a plain TCP stream between two processes of our own as the link's
# measure. The methods are those QEMU and Cloud Hypervisor were measured with in this setup:
# a guest heartbeat (50 Hz, `vmm-guest-tool heartbeat`) on the console, each line stamped with
# the host's clock as it arrives. Prints "BENCH mig-<vmm|qemu>-<idle|dirty> <run> key=value..."
# and "BENCH mig-tcp <run> ..." lines that `cargo xtask bench` tabulates; a figure not measured
# is printed empty (`key=`), never as 0.
set -u
: "${GUEST_KERNEL:?}" "${GUEST_INITRD:?}"
runs=${BENCH_RUNS:-3}
mem_mib=1024
mem_kib=$((mem_mib * 1024))
touch_mib=256
dirty_mib=64
# The dirtier rewrites its whole area once a second: a guest both VMMs can move without
# throttling (QEMU's auto-converge stays off, as by default).
dirty_rate=64
downtime_ms=300
hz=50
period_us=$((1000000 / hz))
tcp_mib=1024
cmdline="reboot=k panic=1 quiet"
qemu=(qemu-system-aarch64 -accel kvm -M virt,gic-version=3 -cpu host -smp 1 -nodefaults
    -no-reboot -display none -serial stdio -global virtio-mmio.force-legacy=false)
port=6100
# A migration that has not converged by then (guest seconds) fails, for either VMM.
mig_timeout_s=300
# The workloads (the default is both).
works=${BENCH_MIG_WORKS:-idle dirty}

say() { echo "bench-migrate: $*"; }
now_us() { echo "${EPOCHREALTIME/./}"; }

wait_path() {
    local i
    for i in $(seq 600); do
        [ -S "$1" ] && return 0
        sleep 0.05
    done
    say "no socket $1"
    return 1
}

# wait_log FILE PATTERN [SECONDS]: waits until FILE has a line containing PATTERN.
wait_log() {
    local i n=$((${3:-600} * 10))
    for i in $(seq "$n"); do
        grep -aq -- "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    say "no line with '$2' in $1"
    return 1
}

# console NAME: makes the FIFOs of a VMM's console: /tmp/NAME.in (held open for writing in
# fd CON_IN) and /tmp/NAME.out, whose lines a reader stamps with the host's clock (µs) into
# /tmp/NAME.log. The VMM is started with `<"/tmp/NAME.in" >"/tmp/NAME.out"`.
console() {
    rm -f "/tmp/$1.in" "/tmp/$1.out" "/tmp/$1.log"
    mkfifo "/tmp/$1.in" "/tmp/$1.out"
    : > "/tmp/$1.log"
    (while IFS= read -r l; do echo "${EPOCHREALTIME/./} $l"; done < "/tmp/$1.out" > "/tmp/$1.log") &
    exec {CON_IN}<> "/tmp/$1.in"
}

# netstat_octets: bytes that left through IP (here: loopback) so far, headers included.
netstat_octets() {
    awk '/^IpExt:/ { if (!n) { for (i = 2; i <= NF; i++) name[i] = $i; n = 1 }
                     else for (i = 2; i <= NF; i++) if (name[i] == "OutOctets") print $i }' /proc/net/netstat
}

# overhead PID: "<KiB outside guest memory> <KiB of guest memory>" from smaps (the guest
# memory is the mapping of at least its size), or nothing.
overhead() {
    awk -v g="$mem_kib" '/^Size:/{size=$2} /^Rss:/{ if (size >= g) { guest += $2; found = 1 } else other += $2 }
        END { if (found) printf "%d %d\n", other, guest }' "/proc/$1/smaps" 2>/dev/null
}

# sampler FILE PID...: every 250 ms, appends "<pid> <overhead KiB> <guest KiB>" of each PID.
sampler() {
    local out=$1 p o
    shift
    while :; do
        for p in "$@"; do
            o=$(overhead "$p")
            [ -n "$o" ] && echo "$p $o" >> "$out"
        done
        sleep 0.25
    done
}

# guest_bytes PID: the bytes of guest memory resident in PID (pages the guest touched), or
# nothing.
guest_bytes() {
    local o g
    read -r o g <<< "$(overhead "$1")"
    [ -n "$g" ] && echo $((g * 1024))
}

# reap: ends what is left of a migration's helpers (console readers, monitors) and reaps them.
reap() {
    local j
    for j in $(jobs -p); do kill "$j" 2>/dev/null; done
    wait 2>/dev/null
}

# max_overhead FILE PID: the largest overhead sampled for PID, or nothing.
max_overhead() {
    awk -v p="$2" '$1 == p && (!seen || $2 > m) { m = $2; seen = 1 } END { if (seen) print m }' "$1"
}

# beats LOG: "<host µs> <seq> <guest µs>" of each heartbeat line of a stamped console log.
beats() {
    awk '{ for (i = 2; i + 2 <= NF; i++) if ($i == "HB" && $(i+1) ~ /^[0-9]+$/ && $(i+2) ~ /^[0-9]+/) {
               printf "%s %s %d\n", $1, $(i+1), $(i+2); break } }' "$1"
}

# gaps SRC_LOG DST_LOG T0 T1: the heartbeat figures of one migration that started at T0 and
# ended at T1 (host µs), as key=value words (µs):
#   base_gap_us: the largest host-clock gap between source beats in the 2 s before T0;
#   switch_gap_us: the last source beat to the first destination beat, host clock (the
#     downtime an outside observer sees);
#   gap_us: the largest host-clock gap between beats of one side, from T0 to 1 s after T1
#     (outside the switchover);
#   stall_us: the same in the guest's own clock, less the beat period: the longest time the
#     guest was held anywhere outside the switchover;
#   lost_beats: beats missing at the switchover.
gaps() {
    { beats "$1" | sed 's/^/S /'; beats "$2" | sed 's/^/D /'; } |
        awk -v t0="$3" -v t1="$4" -v period="$period_us" '
        { side = $1; h = $2; seq = $3; g = $4 }
        side == "S" {
            if (have_s && h >= t0 - 2000000 && h < t0 && h - ph > base) base = h - ph
            if (have_s && h >= t0) { if (h - ph > gap) gap = h - ph; if (g - pg > gg) gg = g - pg }
            ph = h; pg = g; pseq = seq; have_s = 1; last_s = h; last_seq = seq
        }
        side == "D" {
            if (!have_d) { first_d = h; first_seq = seq; have_d = 1 }
            else if (qh <= t1 + 1000000) { if (h - qh > gap) gap = h - qh; if (g - qg > gg) gg = g - qg }
            qh = h; qg = g
        }
        END {
            printf "base_gap_us=%s ", (base > 0 ? base : "")
            if (have_s && have_d) printf "switch_gap_us=%d lost_beats=%d ", first_d - last_s, first_seq - last_seq - 1
            else printf "switch_gap_us= lost_beats= "
            if (gap > 0) printf "gap_us=%d stall_us=%d", gap, (gg > period ? gg - period : 0)
            else printf "gap_us= stall_us="
        }'
}

# json_last FILE KEY: KEY's value in the last JSON line of FILE that has it.
json_last() { grep -ao "\"$2\":[0-9.]*" "$1" 2>/dev/null | tail -1 | sed 's/.*://'; }
# json_max FILE KEY: KEY's largest value in FILE.
json_max() { grep -ao "\"$2\":[0-9.]*" "$1" 2>/dev/null | sed 's/.*://' | sort -g | tail -1; }

# prepare CON_FD LOG WORK: fills the guest's memory, starts the dirtier for WORK=dirty, then
# the heartbeat, and lets it run 2 s for the base gap.
prepare() {
    printf 'dmesg -n 1; vmm-guest-tool touch %d &\n' "$touch_mib" >&"$1"
    wait_log "$2" "TOUCHED $touch_mib" || return 1
    if [ "$3" = dirty ]; then
        printf 'vmm-guest-tool dirty %d %d & echo $! > /tmp/dirty.pid\n' "$dirty_mib" "$dirty_rate" >&"$1"
        wait_log "$2" DIRTY_READY || return 1
    fi
    printf 'vmm-guest-tool heartbeat %d &\n' "$hz" >&"$1"
    wait_log "$2" "HB 10 " || return 1
    sleep 2
}

# verify CON_FD LOG WORK: on the destination, that the heartbeat goes on and, for the dirtier,
# that every one of its pages checks against its sequence number. Prints 1 or 0.
verify() {
    local n0 n1
    n0=$(beats "$2" | wc -l)
    sleep 1
    n1=$(beats "$2" | wc -l)
    [ "$n1" -gt "$n0" ] || { say "the destination's heartbeat stopped" >&2; echo 0; return; }
    if [ "$3" = dirty ]; then
        printf 'kill -USR1 $(cat /tmp/dirty.pid); sleep 3; echo DSTAT $(cat /tmp/dirty.status)\n' >&"$1"
        wait_log "$2" "DSTAT pages=" 120 >&2 || { echo 0; return; }
        grep -a "DSTAT pages=" "$2" | tail -1 | grep -q " bad=0" || { say "dirtier: $(grep -a 'DSTAT pages=' "$2" | tail -1)" >&2; echo 0; return; }
    fi
    echo 1
}

# stop PID CON_FD: powers the guest off (if it still runs there) and reaps the process.
stop() {
    printf 'poweroff -f\n' >&"$2" 2>/dev/null
    local i
    for i in $(seq 100); do
        kill -0 "$1" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$1" 2>/dev/null
    wait "$1" 2>/dev/null
}

mig_vmm() {
    local work=$1 run=$2 ss=/tmp/ms.sock ds=/tmp/md.sock
    local total_ms="" downtime="" sent="" pages="" zero="" bw="" throttle="" rounds=""
    local wire="" touched="" src_oh="" dst_oh="" verified="" rc="" g="" t0="" t1=""
    port=$((port + 1))
    rm -f "$ss" "$ds" /tmp/mem.samples /tmp/send.json
    console vs
    local vs_in=$CON_IN
    vmm run --kernel "$GUEST_KERNEL" --initrd "$GUEST_INITRD" --cmdline "console=ttyS0 $cmdline" \
        --vcpus 1 --memory "$mem_mib" --api-sock "$ss" < /tmp/vs.in > /tmp/vs.out 2> /tmp/vs.err &
    local spid=$!
    console vd
    local vd_in=$CON_IN dpid=""
    if wait_log /tmp/vs.log GUEST_READY && prepare "$vs_in" /tmp/vs.log "$work"; then
        touched=$(guest_bytes "$spid")
        vmm receive --listen "tcp:127.0.0.1:$port" --api-sock "$ds" < /tmp/vd.in > /tmp/vd.out 2> /tmp/vd.err &
        dpid=$!
        if wait_path "$ds"; then
            sampler /tmp/mem.samples "$spid" "$dpid" &
            local smp=$!
            local o0
            o0=$(netstat_octets)
            t0=$(now_us)
            (while sleep 20; do say "vmm $work: $(tail -1 /tmp/send.json | cut -c1-400)"; done) &
            local watch=$!
            vmm send --api-sock "$ss" --to "tcp:127.0.0.1:$port" --downtime-ms "$downtime_ms" \
                --timeout "$mig_timeout_s" --json > /tmp/send.json 2> /tmp/send.err
            rc=$?
            kill "$watch" 2>/dev/null
            t1=$(now_us)
            kill "$smp" 2>/dev/null
            wait "$smp" 2>/dev/null
            [ "$rc" = 0 ] || { say "vmm send ($work) exited $rc: $(tail -3 /tmp/send.err) $(tail -1 /tmp/send.json)"; tail -3 /tmp/vd.err; }
            if [ "$rc" = 0 ]; then
                wire=$(($(netstat_octets) - o0))
                total_ms=$(json_last /tmp/send.json total_time_ms)
                downtime=$(json_last /tmp/send.json downtime_ms)
                sent=$(json_last /tmp/send.json bytes_sent)
                pages=$(json_last /tmp/send.json pages)
                zero=$(json_last /tmp/send.json zero_pages)
                bw=$(json_max /tmp/send.json bandwidth_bytes_per_s)
                throttle=$(json_max /tmp/send.json throttle_percent)
                rounds=$(json_last /tmp/send.json round)
                src_oh=$(max_overhead /tmp/mem.samples "$spid")
                dst_oh=$(max_overhead /tmp/mem.samples "$dpid")
                verified=$(verify "$vd_in" /tmp/vd.log "$work")
                g=$(gaps /tmp/vs.log /tmp/vd.log "$t0" "$t1")
            fi
        fi
    fi
    [ -n "$dpid" ] && stop "$dpid" "$vd_in"
    stop "$spid" "$vs_in"
    exec {vs_in}>&- {vd_in}>&-
    reap
    [ -n "$g" ] || g="base_gap_us= switch_gap_us= lost_beats= gap_us= stall_us="
    [ -n "$rc" ] || { say "vmm $work: no migration"; tail -5 /tmp/vs.err; rc=1; }
    local dirt
    dirt=$(dirtied "$work" "$total_ms")
    echo "BENCH mig-vmm-$work $run total_ms=$total_ms $(derived "$wire" "$total_ms" "$touched" "$dirt") vmm_downtime_ms=$downtime" \
        "pause_resume_ms=$downtime $g wire_bytes=$wire page_bytes=$sent pages=$pages zero_pages=$zero" \
        "touched_bytes=$touched dirtied_bytes=$dirt" \
        "bw_bytes_s=$bw throttle_pct=$throttle rounds=$rounds src_overhead_kib=$src_oh" \
        "dst_overhead_kib=$dst_oh verified=$verified exit=$rc"
}

# figures WIRE TOTAL_MS TOUCHED DIRTIED: "rate_mib_s=... need_bytes=...": the wire bytes per
# second of the migration's total time, and the bytes it had to move at least (the guest's
# touched memory before it started plus what the dirtier wrote meanwhile); empty where a figure
# is missing.
derived() {
    local rate="" need=""
    [ -n "$1" ] && [ -n "$2" ] && rate=$(awk -v w="$1" -v t="$2" 'BEGIN { if (t > 0) printf "%.1f", w / 1048576 / (t / 1000) }')
    [ -n "$3" ] && [ -n "$4" ] && need=$(awk -v a="$3" -v b="$4" 'BEGIN { printf "%.0f", a + b }')
    echo "rate_mib_s=$rate need_bytes=$need"
}

# dirtied WORK TOTAL_MS: the bytes the dirtier wrote during the migration (its rate times the
# time; a throttled dirtier wrote fewer): an upper bound of the pages it dirtied. Empty
# without a time.
dirtied() {
    if [ "$1" = idle ]; then echo 0; elif [ -n "$2" ]; then
        awk -v r="$dirty_rate" -v t="$2" 'BEGIN { printf "%.0f\n", r * 1048576 * t / 1000 }'
    fi
}

# QEMU's human monitor over one persistent connection (as in bench-snapshot.sh); the answers
# are appended to /tmp/mon.out.
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

# qmp_events SOCKET FILE: appends the QMP events of QEMU at SOCKET to FILE (each carries the
# host time QEMU emitted it at); sets QMP_FD (close it to end) and QMP_PID.
qmp_events() {
    rm -f "$2.in"
    : > "$2"
    mkfifo "$2.in"
    wait_path "$1" || return 1
    socat -t 30 - "UNIX-CONNECT:$1" < "$2.in" >> "$2" 2>/dev/null &
    QMP_PID=$!
    exec {QMP_FD}> "$2.in"
    printf '{"execute": "qmp_capabilities"}\n' >&"$QMP_FD"
}

# event_us FILE EVENT: the host time (µs) of the first EVENT in a QMP event log.
event_us() {
    local s u
    read -r s u <<< "$(grep -a "\"event\": \"$2\"" "$1" | head -1 |
        sed -n 's/.*"seconds": *\([0-9]*\), *"microseconds": *\([0-9]*\).*/\1 \2/p')"
    [ -n "$u" ] && echo $((s * 1000000 + u))
}

# info_field NAME: the last value of "NAME: <n>" in the monitor's answers.
info_field() { grep -aoE "(^|[^a-z ])$1: [0-9]+" /tmp/mon.out | tail -1 | grep -o '[0-9]*$'; }

mig_qemu() {
    local work=$1 run=$2
    local total_ms="" downtime="" pause_resume="" sent="" pages="" zero="" wire="" touched=""
    local src_oh="" dst_oh="" verified="" rc="" g="" t0="" t1="" bw=""
    port=$((port + 1))
    rm -f /tmp/qs.mon /tmp/qs.qmp /tmp/qd.qmp /tmp/mem.samples
    local boot=(-m "$mem_mib" -kernel "$GUEST_KERNEL" -initrd "$GUEST_INITRD" -append "console=ttyAMA0 $cmdline")
    console qs
    local qs_in=$CON_IN
    "${qemu[@]}" "${boot[@]}" -monitor unix:/tmp/qs.mon,server,nowait -qmp unix:/tmp/qs.qmp,server,nowait \
        < /tmp/qs.in > /tmp/qs.out 2> /tmp/qs.err &
    local spid=$!
    console qd
    local qd_in=$CON_IN dpid="" sq="" dq="" sqp="" dqp=""
    if wait_log /tmp/qs.log GUEST_READY && prepare "$qs_in" /tmp/qs.log "$work"; then
        touched=$(guest_bytes "$spid")
        "${qemu[@]}" "${boot[@]}" -qmp unix:/tmp/qd.qmp,server,nowait -incoming "tcp:127.0.0.1:$port" \
            < /tmp/qd.in > /tmp/qd.out 2> /tmp/qd.err &
        dpid=$!
        if qmp_events /tmp/qs.qmp /tmp/qs.events && sq=$QMP_FD sqp=$QMP_PID &&
            qmp_events /tmp/qd.qmp /tmp/qd.events && dq=$QMP_FD dqp=$QMP_PID && mon_open /tmp/qs.mon; then
            mon "migrate_set_parameter downtime-limit $downtime_ms"
            mon 'migrate_set_parameter max-bandwidth 100G'
            sleep 1
            sampler /tmp/mem.samples "$spid" "$dpid" &
            local smp=$! o0 i
            o0=$(netstat_octets)
            : > /tmp/mon.out
            t0=$(now_us)
            mon "migrate -d tcp:127.0.0.1:$port"
            # Polled as often as `vmm send` polls vmm (every 200 ms).
            for i in $(seq $((mig_timeout_s * 5))); do
                sleep 0.2
                mon 'info migrate'
                grep -aqE 'Migration status: (completed|failed|cancelled)' /tmp/mon.out && break
            done
            t1=$(now_us)
            sleep 0.3
            kill "$smp" 2>/dev/null
            wait "$smp" 2>/dev/null
            if grep -aq 'Migration status: completed' /tmp/mon.out; then
                rc=0
                wire=$(($(netstat_octets) - o0))
                total_ms=$(info_field 'total time')
                downtime=$(info_field downtime)
                local kb
                kb=$(info_field 'transferred ram')
                [ -n "$kb" ] && sent=$((kb * 1024))
                pages=$(info_field normal)
                zero=$(info_field duplicate)
                local mbps
                mbps=$(info_field throughput)
                [ -n "$mbps" ] && bw=$((mbps * 1000000 / 8))
                local stop_us resume_us
                stop_us=$(event_us /tmp/qs.events STOP)
                resume_us=$(event_us /tmp/qd.events RESUME)
                [ -n "$stop_us" ] && [ -n "$resume_us" ] &&
                    pause_resume=$(awk -v a="$stop_us" -v b="$resume_us" 'BEGIN { printf "%.1f", (b - a) / 1000 }')
                src_oh=$(max_overhead /tmp/mem.samples "$spid")
                dst_oh=$(max_overhead /tmp/mem.samples "$dpid")
                verified=$(verify "$qd_in" /tmp/qd.log "$work")
                g=$(gaps /tmp/qs.log /tmp/qd.log "$t0" "$t1")
            else
                rc=1
                say "QEMU $work: $(grep -a 'Migration status' /tmp/mon.out | tail -1)"
            fi
            mon quit
            mon_close
        fi
    fi
    [ -n "$sq" ] && exec {sq}>&-
    [ -n "$dq" ] && exec {dq}>&-
    [ -n "$dpid" ] && stop "$dpid" "$qd_in"
    kill -9 "$spid" 2>/dev/null
    wait "$spid" 2>/dev/null
    exec {qs_in}>&- {qd_in}>&-
    reap
    [ -n "$g" ] || g="base_gap_us= switch_gap_us= lost_beats= gap_us= stall_us="
    [ -n "$rc" ] || { say "QEMU $work: no migration"; tail -5 /tmp/qs.err; rc=1; }
    local dirt
    dirt=$(dirtied "$work" "$total_ms")
    echo "BENCH mig-qemu-$work $run total_ms=$total_ms $(derived "$wire" "$total_ms" "$touched" "$dirt") qemu_downtime_ms=$downtime" \
        "pause_resume_ms=$pause_resume $g wire_bytes=$wire page_bytes=$sent pages=$pages zero_pages=$zero" \
        "touched_bytes=$touched dirtied_bytes=$dirt" \
        "bw_bytes_s=$bw src_overhead_kib=$src_oh dst_overhead_kib=$dst_oh verified=$verified exit=$rc"
}

# The link: a plain TCP stream over loopback between two processes of ours, 1 MiB writes and
# 1 MiB reads.
tcp_stream() {
    local run=$1 mibs="" wire="" o0 rc
    port=$((port + 1))
    vmm-guest-tool sink "$port" > /tmp/sink.out 2>&1 &
    local sp=$!
    wait_log /tmp/sink.out SINK_LISTENING 30
    o0=$(netstat_octets)
    mibs=$(vmm-guest-tool send "tcp:127.0.0.1:$port" "$tcp_mib" | awk '/^SEND_MIBS/{print $2}')
    wire=$(($(netstat_octets) - o0))
    wait "$sp"
    rc=$?
    grep -q "SINK_BYTES $((tcp_mib << 20))" /tmp/sink.out || { say "sink: $(cat /tmp/sink.out)"; rc=1; mibs=""; }
    echo "BENCH mig-tcp $run mib_s=$mibs wire_bytes=$wire payload_bytes=$((tcp_mib << 20)) exit=$rc"
}

have_qemu=""
command -v qemu-system-aarch64 >/dev/null && have_qemu=1
for run in $(seq "$runs"); do
    tcp_stream "$run"
    for work in $works; do
        say "run $run: $work"
        mig_vmm "$work" "$run"
        # No QEMU in the host: no QEMU line, and xtask reports its figures missing.
        [ -n "$have_qemu" ] && mig_qemu "$work" "$run"
    done
done
exit 0
