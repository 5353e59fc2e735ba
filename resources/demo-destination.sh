#!/bin/bash
# The demo's second host: `vmm receive` waits for the guest, runs it, and the guest shows
# that it carried on: its uptime went on from host a's, the file it wrote there is here.
set -u
echo "== host b: vmm receive --listen tcp:0.0.0.0:7000"
coproc VM { vmm receive --listen tcp:0.0.0.0:7000 2>&1; }
vm_pid=$VM_PID
arrived=0
while IFS= read -r -t 900 line <&"${VM[0]}"; do
    printf '%s\n' "${line%$'\r'}"
    case "$line" in *"incoming migration from"*complete*) arrived=1; break ;;
        *"incoming migration failed"*) break ;; esac
done
if [ "$arrived" != 1 ]; then
    echo "== host b: no guest arrived"
    wait "$vm_pid"
    exit 1
fi
printf 'echo "== guest on host b: uptime $(cut -d" " -f1 /proc/uptime)"; cat /root/note; nproc; poweroff -f\n' >&"${VM[1]}"
while IFS= read -r -t 600 line <&"${VM[0]}"; do printf '%s\n' "${line%$'\r'}"; done
wait "$vm_pid"
rc=$?
echo "== host b: vmm exited with status $rc"
exit "$rc"
