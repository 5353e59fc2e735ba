#!/bin/bash
# Boot benchmark inside an emulated host (run with -icount for repeatable figures).
# Prints "BENCH <vmm|qemu> <run> key=value..." lines that `cargo xtask bench` tabulates.
set -u
: "${GUEST_KERNEL:?}" "${GUEST_INITRD:?}"
runs=${BENCH_RUNS:-3}
mem_mib=128
mem_kib=$((mem_mib * 1024))

us() { local t=${EPOCHREALTIME/./}; echo "$t"; }

# RSS of a process outside its guest-memory mapping (the one exactly the guest's size), and
# inside it, in KiB: Firecracker's way of measuring VMM overhead.
rss_split() {
    awk -v g="$mem_kib" '/^Size:/{size=$2} /^Rss:/{ if (size == g) guest += $2; else other += $2 }
        END { printf "overhead_kib=%d guest_rss_kib=%d", other, guest }' "/proc/$1/smaps"
}

# boot NAME RUN COMMAND...: starts COMMAND with the console on its stdio, times the console
# reaching GUEST_READY, measures memory, then powers the guest off.
boot() {
    local name=$1 run=$2
    shift 2
    local t0 t1 line pid rc mem
    t0=$(us)
    coproc G { exec "$@" 2>/tmp/bench.err; }
    pid=$G_PID
    local in=${G[1]} out=${G[0]}
    while IFS= read -r -t 900 line <&"$out"; do
        case "$line" in *GUEST_READY*) break ;; esac
    done
    t1=$(us)
    sleep 1
    LOAD=""
    if [ "$name" = vmm-api ]; then
        LOAD=$(api-load /tmp/bench.sock 10 200)
    fi
    mem=$(rss_split "$pid")
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
    echo "BENCH $name $run ready_us=$((t1 - t0)) $mem exit=$rc $extra"
}

cmdline="reboot=k panic=1 quiet"
cat > /tmp/bench.json <<JSON
{"boot-source": {"kernel_image_path": "$GUEST_KERNEL", "initrd_path": "$GUEST_INITRD",
                 "boot_args": "console=ttyS0 $cmdline"},
 "machine-config": {"vcpu_count": 1, "mem_size_mib": $mem_mib}}
JSON
for run in $(seq "$runs"); do
    boot vmm "$run" vmm run --kernel "$GUEST_KERNEL" --initrd "$GUEST_INITRD" --vcpus 1 \
        --memory "$mem_mib" --cmdline "console=ttyS0 $cmdline" --boot-timer
    boot vmm-api "$run" vmm --api-sock /tmp/bench.sock --config-file /tmp/bench.json --boot-timer
    if command -v qemu-system-aarch64 >/dev/null; then
        boot qemu "$run" qemu-system-aarch64 -accel kvm -M virt,gic-version=3 -cpu host -smp 1 \
            -m "$mem_mib" -nodefaults -no-reboot -display none -serial stdio \
            -kernel "$GUEST_KERNEL" -initrd "$GUEST_INITRD" -append "console=ttyAMA0 $cmdline"
    fi
done
