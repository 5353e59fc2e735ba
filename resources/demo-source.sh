#!/bin/bash
# The demo's first host: boot a guest with vmm (2 vCPUs, 512 MiB), have it write a file and
# show its uptime, then live-migrate it to the second host with `vmm send` (progress on the
# console), and check that the source vmm exits 0 once the guest runs there.
set -u
: "${GUEST_KERNEL:?}" "${GUEST_INITRD:?}" "${PEER_ADDR:?}"
sock=/tmp/demo-vmm.sock
echo "== host a: vmm $(vmm --version | cut -d' ' -f2) boots a guest (2 vCPUs, 512 MiB)"
coproc VM { vmm run --kernel "$GUEST_KERNEL" --initrd "$GUEST_INITRD" --vcpus 2 --memory 512 \
    --cmdline "console=ttyS0 reboot=k panic=1 quiet rdinit=/init" --api-sock "$sock" 2>&1; }
vm_pid=$VM_PID
ready=0
while IFS= read -r -t 600 line <&"${VM[0]}"; do
    printf '%s\n' "${line%$'\r'}"
    case "$line" in *GUEST_READY*) ready=1; break ;; esac
done
if [ "$ready" != 1 ]; then
    echo "== the guest never printed GUEST_READY"
    exit 1
fi
printf 'echo "written on host a at uptime $(cut -d" " -f1 /proc/uptime)" > /root/note; cat /root/note\n' >&"${VM[1]}"
# Show the console until the guest has written its note, then keep draining it in the
# background (through a copy of the descriptor: a subshell does not get the coproc's own).
while IFS= read -r -t 60 line <&"${VM[0]}"; do
    printf '%s\n' "${line%$'\r'}"
    case "$line" in "written on host a at uptime "[0-9]*) break ;; esac
done
exec {console}<&"${VM[0]}"
(while IFS= read -r line; do printf '%s\n' "${line%$'\r'}"; done) <&"$console" &
# The second host may still be starting its vmm receive: try until it listens.
echo "== host a: vmm send --to tcp:$PEER_ADDR:7000"
rc=1
for _ in $(seq 1 60); do
    # Through a pipe, the progress comes as one line (with its bar) each second.
    vmm send --api-sock "$sock" --to "tcp:$PEER_ADDR:7000" | cat
    rc=${PIPESTATUS[0]}
    [ "$rc" = 0 ] && break
    # A refused connection leaves the guest running here; anything else is the answer.
    vmm migration status --api-sock "$sock" 2>/dev/null | grep -q "cannot connect" || break
    sleep 2
done
wait "$vm_pid"
vm_rc=$?
echo "== host a: vmm send exited $rc, the source vmm exited $vm_rc"
[ "$rc" = 0 ] && [ "$vm_rc" = 0 ]
