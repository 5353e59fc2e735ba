#!/bin/bash
# The demo: boot a guest with vmm, show its console reaching GUEST_READY, run `uname -a` and
# `nproc` in it, power it off, and check that vmm exited cleanly.
set -u
: "${GUEST_KERNEL:?}" "${GUEST_INITRD:?}" "${GUEST_ROOTFS:?}"
# The guest boots from a copy of the ext4 rootfs (the initramfs only loads the virtio modules).
root=$(mktemp /tmp/demo-rootfs.XXXXXX)
cp "$GUEST_ROOTFS" "$root"
echo "== vmm $(vmm --version | cut -d' ' -f2): booting $GUEST_KERNEL with 2 vCPUs, 512 MiB, root on a virtio disk"
coproc VM { vmm run --kernel "$GUEST_KERNEL" --initrd "$GUEST_INITRD" --vcpus 2 --memory 512 \
    --cmdline "console=ttyS0 reboot=k panic=1 quiet" --boot-timer \
    --drive "id=rootfs,path=$root,root,cache=writeback" --entropy 2>&1; }
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
printf 'uname -a\nnproc\ngrep " / " /proc/mounts\npoweroff -f\n' >&"${VM[1]}"
while IFS= read -r -t 600 line <&"${VM[0]}"; do printf '%s\n' "${line%$'\r'}"; done
wait "$vm_pid"
rc=$?
echo "== vmm exited with status $rc"
rm -f "$root"
exit "$rc"
