#!/bin/bash
# Boot benchmark inside an emulated host (run with -icount for repeatable figures).
# Prints "BENCH <vmm|qemu> <run> key=value..." lines that `cargo xtask bench` tabulates. A figure
# that was not measured (a VMM that did not boot, a guest command that printed nothing) is
# printed with an empty value, "key=", never as 0: xtask reports it as missing and fails.
set -u
: "${GUEST_KERNEL:?}" "${GUEST_INITRD:?}"
runs=${BENCH_RUNS:-3}
mem_mib=128
mem_kib=$((mem_mib * 1024))

us() { local t=${EPOCHREALTIME/./}; echo "$t"; }

# want PHASE: whether BENCH_ONLY (comma-separated, empty for all) includes PHASE.
want() { [ -z "${BENCH_ONLY:-}" ] || [[ ",$BENCH_ONLY," == *",$1,"* ]]; }

# RSS of a process outside its guest-memory mapping (the one exactly the guest's size), and
# inside it, in KiB: Firecracker's way of measuring VMM overhead.
rss_split() {
    [ -r "/proc/$1/smaps" ] || { echo "overhead_kib= guest_rss_kib="; return; }
    awk -v g="$mem_kib" '/^Size:/{size=$2} /^Rss:/{ if (size == g) guest += $2; else other += $2 }
        END { printf "overhead_kib=%d guest_rss_kib=%d", other, guest }' "/proc/$1/smaps"
}

# boot NAME RUN COMMAND...: starts COMMAND with the console on its stdio, times the console
# reaching GUEST_READY, measures memory, then powers the guest off.
boot() {
    local name=$1 run=$2
    shift 2
    local t0 t1 line pid rc mem ready=""
    t0=$(us)
    coproc G { exec "$@" 2>/tmp/bench.err; }
    pid=$G_PID
    local in=${G[1]} out=${G[0]}
    while IFS= read -r -t 900 line <&"$out"; do
        case "$line" in *GUEST_READY*) ready=1; break ;; esac
    done
    t1=$(us)
    sleep 1
    LOAD=""
    if [ "$name" = vmm-api ]; then
        LOAD=$(api-load /tmp/bench.sock 10 200)
    fi
    mem="overhead_kib= guest_rss_kib="
    if [ -n "$ready" ]; then
        mem=$(rss_split "$pid")
        # Peak RSS (VmHWM) above the steady RSS: memory held only while starting (a kernel
        # read into a buffer, say), which hosts packing many VMs must provision as well.
        mem="$mem $(awk '/^VmHWM:/{h=$2} /^VmRSS:/{r=$2} END {if (h) printf "peak_excess_kib=%d", h - r}' "/proc/$pid/status")"
    fi
    printf 'poweroff -f\n' >&"$in"
    while IFS= read -r -t 900 line <&"$out"; do :; done
    wait "$pid"
    rc=$?
    local extra=""
    if [ "$name" = vmm-api ]; then
        local api_ready load
        api_ready=$(sed -n 's/.*API ready on .* after \([0-9]*\) us.*/\1/p' /tmp/bench.err | head -1)
        extra="api_ready_us=$api_ready $LOAD"
    fi
    if [ "$name" = vmm ] || [ "$name" = vmm-api ]; then
        local setup boot_us
        setup=$(sed -n 's/.*Setup-time = *\([0-9]*\) us.*/\1/p' /tmp/bench.err | head -1)
        boot_us=$(sed -n 's/.*Guest-boot-time = *\([0-9]*\) us.*/\1/p' /tmp/bench.err | head -1)
        extra="$extra setup_us=$setup boot_timer_us=$boot_us"
    fi
    local ready_us=""
    if [ -n "$ready" ]; then ready_us=$((t1 - t0)); fi
    echo "BENCH $name $run ready_us=$ready_us $mem exit=$rc $extra"
}

cmdline="reboot=k panic=1 quiet"
# QEMU's fixed arguments. virtio-mmio in QEMU defaults to the legacy (virtio 0.9) interface;
# vmm's devices are virtio 1.x, so QEMU's are made virtio 1.x too (and checked in the guest).
qemu=(qemu-system-aarch64 -accel kvm -M virt,gic-version=3 -cpu host -smp 1 -nodefaults
    -no-reboot -display none -serial stdio -global virtio-mmio.force-legacy=false)
# MiB per stream run: enough that 10 ms CPU ticks and the run's start and end are noise.
stream_mib=256
cat > /tmp/bench.json <<JSON
{"boot-source": {"kernel_image_path": "$GUEST_KERNEL", "initrd_path": "$GUEST_INITRD",
                 "boot_args": "console=ttyS0 $cmdline"},
 "machine-config": {"vcpu_count": 1, "mem_size_mib": $mem_mib}}
JSON
want boot && for run in $(seq "$runs"); do
    boot vmm "$run" vmm run --kernel "$GUEST_KERNEL" --initrd "$GUEST_INITRD" --vcpus 1 \
        --memory "$mem_mib" --cmdline "console=ttyS0 $cmdline" --boot-timer
    boot vmm-api "$run" vmm --api-sock /tmp/bench.sock --config-file /tmp/bench.json --boot-timer
    if command -v qemu-system-aarch64 >/dev/null; then
        boot qemu "$run" "${qemu[@]}" -m "$mem_mib" \
            -kernel "$GUEST_KERNEL" -initrd "$GUEST_INITRD" -append "console=ttyAMA0 $cmdline"
    fi
done

# Block I/O: the same raw image behind vmm's virtio-blk and QEMU's virtio-blk-device (both
# virtio-mmio). The guest times sequential writes (each then fsync) and reads of the whole image
# in 1 MiB O_DIRECT requests with vmm-guest-tool, on its own clock; the VMM's CPU time comes from
# /proc/PID/stat.
blk_mib=128
# Passes over the image per direction and run. The time of one pass alternates by up to 1.8x
# between consecutive passes, for QEMU and vmm alike (the emulated host, not the device), so a
# single pass compares whichever level each VMM happened to land on. An even count covers both.
blk_passes=4
disk=/tmp/bench-disk.img
dd if=/dev/zero of="$disk" bs=1M count="$blk_mib" 2>/dev/null

# cpu_ticks PID: user + system clock ticks of a process.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# guest_run IN OUT CMD: runs CMD in the guest and prints its output lines between markers.
guest_run() {
    local in=$1 out=$2 line
    printf 'echo @@B''EGIN; %s; echo @@E''ND\n' "$3" >&"$in"
    local inside=0
    while IFS= read -r -t 900 line <&"$out"; do
        line=${line%$'\r'}
        case "$line" in
            @@BEGIN) inside=1 ;;
            @@END) return 0 ;;
            *) [ "$inside" = 1 ] && printf '%s\n' "$line" ;;
        esac
    done
    return 1
}

# virtio_versions IN OUT: how many of the guest's virtio devices negotiated VIRTIO_F_VERSION_1
# (feature bit 32: the 33rd character of sysfs "features"), as virtio_modern=N, and how many
# did not (legacy), as virtio_legacy=N; both empty when the guest listed no device.
virtio_versions() {
    local v
    v=$(guest_run "$1" "$2" 'dmesg -n 1; for d in /sys/bus/virtio/devices/*; do [ -r "$d/features" ] && echo "VIRTIO_DEV $(cat "$d/device") $(cut -c33 "$d/features")"; done; true')
    printf '%s\n' "$v" | awk '$1 == "VIRTIO_DEV" { if ($3 == "1") m++; else l++ }
        END { if (m + l) { printf "virtio_modern=%d virtio_legacy=%d\n", m, l } else { print "virtio_modern= virtio_legacy=" } }'
}

# vm_start COMMAND...: starts a guest with its console on a coprocess and waits for
# GUEST_READY; sets vm_pid, vm_in and vm_out.
vm_start() {
    local line
    coproc VM { exec "$@" 2>/dev/null; }
    vm_pid=$VM_PID vm_in=${VM[1]} vm_out=${VM[0]}
    while IFS= read -r -t 900 line <&"$vm_out"; do
        case "$line" in *GUEST_READY*) break ;; esac
    done
}

# vm_stop: powers the guest off and sets vm_rc to the VMM's exit status.
vm_stop() {
    local line
    printf 'poweroff -f\n' >&"$vm_in"
    while IFS= read -r -t 900 line <&"$vm_out"; do :; done
    wait "$vm_pid"
    vm_rc=$?
}

# poll_ns PID: nanoseconds the VM's vCPUs have spent in KVM halt polling (the kernel's per-VM
# statistics in debugfs), or nothing when debugfs has none for PID.
poll_ns() {
    mountpoint -q /sys/kernel/debug || mount -t debugfs none /sys/kernel/debug 2>/dev/null
    local d
    for d in /sys/kernel/debug/kvm/"$1"-*; do
        [ -r "$d/halt_poll_success_ns" ] || continue
        echo $(($(cat "$d/halt_poll_success_ns") + $(cat "$d/halt_poll_fail_ns")))
        return
    done
}

# pass_rate KEY: reads "KEY <MiB/s>" lines of equal-sized passes and prints their combined
# rate: all the MiB over the sum of the passes' times; nothing unless all $blk_passes passes
# reported one.
pass_rate() {
    awk -v key="$1" -v mib="$blk_mib" -v want="$blk_passes" '$1 == key && $2 > 0 { t += mib / $2; n++ }
        END { if (n == want) printf "%.3f\n", n * mib / t }'
}

blk() {
    local name=$1 run=$2
    shift 2
    vm_start "$@"
    local pid=$vm_pid in=$vm_in out=$vm_out
    local c0 w r c1 p0 p1 virtio
    virtio=$(virtio_versions "$in" "$out")
    p0=$(poll_ns "$pid")
    c0=$(cpu_ticks "$pid")
    # No pipeline on guest_run: the coprocess's descriptors are not there in a pipeline's subshell.
    w=$(guest_run "$in" "$out" "dmesg -n 1; for i in $(seq -s " " "$blk_passes"); do vmm-guest-tool seqwrite /dev/vda $blk_mib; done")
    r=$(guest_run "$in" "$out" "for i in $(seq -s " " "$blk_passes"); do vmm-guest-tool seqread /dev/vda $blk_mib; done")
    c1=$(cpu_ticks "$pid")
    p1=$(poll_ns "$pid")
    w=$(printf '%s\n' "$w" | pass_rate SEQWRITE_MIBS)
    r=$(printf '%s\n' "$r" | pass_rate SEQREAD_MIBS)
    iops=$(guest_run "$in" "$out" "vmm-guest-tool randread /dev/vda 5")
    iops=$(printf '%s\n' "$iops" | awk '/^RANDREAD_IOPS/{print $2}')
    vm_stop
    local rc=$vm_rc hz
    hz=$(getconf CLK_TCK 2>/dev/null || echo 100)
    # Per MiB figures only when every pass moved its MiB: else they divide by MiB never moved.
    awk -v w="$w" -v r="$r" -v iops="$iops" -v c0="$c0" -v c1="$c1" -v p0="$p0" -v p1="$p1" -v hz="$hz" -v mib="$blk_mib" -v passes="$blk_passes" -v n="$name" -v run="$run" -v rc="$rc" -v virtio="$virtio" 'BEGIN {
        moved = 2 * passes * mib; all = (w != "" && r != "")
        cpu = (all && c0 != "" && c1 != "") ? sprintf("%.3f", (c1 - c0) * 1000 / hz / moved) : ""
        poll = (all && p0 != "" && p1 != "") ? sprintf("%.3f", (p1 - p0) / 1e6 / moved) : ""
        printf "BENCH %s %s write_mib_s=%s read_mib_s=%s cpu_ms_per_mib=%s poll_ms_per_mib=%s randread_iops=%s passes=%d %s exit=%d\n",
            n, run, w, r, cpu, poll, iops, passes, virtio, rc }' </dev/null
}

# stream NAME RUN TARGET SINK -- COMMAND...: boots COMMAND, starts SINK on the host, has the
# guest send $stream_mib MiB to TARGET with vmm-guest-tool, and reports MiB/s (guest time) and the
# VM process's CPU time per MiB.
stream() {
    local name=$1 run=$2 target=$3 sink=$4
    shift 5
    vm_start "$@"
    local pid=$vm_pid in=$vm_in out=$vm_out
    guest_run "$in" "$out" "dmesg -n 1; ip addr add 172.32.0.2/24 dev eth0 2>/dev/null; ip link set eth0 up 2>/dev/null; ping -c 1 -W 5 172.32.0.1 >/dev/null 2>&1; true" >/dev/null
    local virtio
    virtio=$(virtio_versions "$in" "$out")
    timeout 600 bash -c "$sink" &
    local sink_pid=$! c0 c1 rate
    sleep 0.5
    c0=$(cpu_ticks "$pid")
    rate=$(guest_run "$in" "$out" "vmm-guest-tool send $target $stream_mib")
    rate=$(printf '%s\n' "$rate" | awk '/^SEND_MIBS/{print $2}')
    c1=$(cpu_ticks "$pid")
    wait "$sink_pid" 2>/dev/null
    vm_stop
    local rc=$vm_rc hz
    hz=$(getconf CLK_TCK 2>/dev/null || echo 100)
    awk -v r="$rate" -v mib="$stream_mib" -v c0="$c0" -v c1="$c1" -v hz="$hz" -v n="$name" -v run="$run" -v rc="$rc" -v virtio="$virtio" 'BEGIN {
        cpu = (r != "" && c0 != "" && c1 != "") ? sprintf("%.3f", (c1 - c0) * 1000 / hz / mib) : ""
        printf "BENCH %s %s mib_s=%s cpu_ms_per_mib=%s %s exit=%d\n", n, run, r, cpu, virtio, rc }' </dev/null
}

want blk && for run in $(seq "$runs"); do
    blk blk-vmm "$run" vmm run --kernel "$GUEST_KERNEL" --initrd "$GUEST_INITRD" --vcpus 1 --memory 256 \
        --cmdline "console=ttyS0 $cmdline" --drive "id=bench,path=$disk,cache=writeback"
    if command -v qemu-system-aarch64 >/dev/null; then
        blk blk-qemu "$run" "${qemu[@]}" -m 256 \
            -drive "file=$disk,if=none,id=d0,format=raw,cache=writeback" -device virtio-blk-device,drive=d0 \
            -kernel "$GUEST_KERNEL" -initrd "$GUEST_INITRD" -append "console=ttyAMA0 $cmdline"
    fi
done

# Network: guest to host over a tap, virtio-net over virtio-mmio on both sides.
ip tuntap add dev bt0 mode tap vnet_hdr && ip addr add 172.32.0.1/24 dev bt0 && ip link set bt0 up
net_sink="socat -u TCP-LISTEN:9200,reuseaddr OPEN:/dev/null"
want net && for run in $(seq "$runs"); do
    stream net-vmm "$run" tcp:172.32.0.1:9200 "$net_sink" -- vmm run --kernel "$GUEST_KERNEL" \
        --initrd "$GUEST_INITRD" --vcpus 1 --memory 256 --cmdline "console=ttyS0 $cmdline" \
        --net id=eth0,tap=bt0
    if command -v qemu-system-aarch64 >/dev/null; then
        stream net-qemu "$run" tcp:172.32.0.1:9200 "$net_sink" -- "${qemu[@]}" -m 256 \
            -netdev tap,id=n0,ifname=bt0,script=no,downscript=no \
            -device virtio-net-device,netdev=n0 \
            -kernel "$GUEST_KERNEL" -initrd "$GUEST_INITRD" -append "console=ttyAMA0 $cmdline"
    fi
done

# vsock: guest to host. vmm's hybrid vsock ends in a Unix socket; QEMU's vhost-vsock in the
# host kernel's AF_VSOCK.
want vsock && for run in $(seq "$runs"); do
    rm -f /tmp/bv.sock /tmp/bv.sock_5000
    stream vsock-vmm "$run" vsock:2:5000 "socat -u UNIX-LISTEN:/tmp/bv.sock_5000 OPEN:/dev/null" -- \
        vmm run --kernel "$GUEST_KERNEL" --initrd "$GUEST_INITRD" --vcpus 1 --memory 256 \
        --cmdline "console=ttyS0 $cmdline" --vsock cid=3,path=/tmp/bv.sock
    if command -v qemu-system-aarch64 >/dev/null && [ -e /dev/vhost-vsock ]; then
        stream vsock-qemu "$run" vsock:2:5000 "socat -u VSOCK-LISTEN:5000 OPEN:/dev/null" -- \
            "${qemu[@]}" -m 256 -device vhost-vsock-device,guest-cid=3 \
            -kernel "$GUEST_KERNEL" -initrd "$GUEST_INITRD" -append "console=ttyAMA0 $cmdline"
    fi
done

# Each BENCH line carries its own exit status, and a figure not measured is left empty; xtask
# judges both. A phase left out is not a failure.
exit 0
