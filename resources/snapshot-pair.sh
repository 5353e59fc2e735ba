#!/bin/bash
# Cross-host snapshot checks, run by `cargo xtask test` in two linked emulated hosts
# (xtask/src/pair_checks.rs, docs/testing.md). ROLE is set before this text:
#   source   boots a 1 vCPU, 128 MiB guest whose shell prints tick-N five times a second,
#            pauses it, snapshots it, and sends the state file, the memory file, the last tick
#            and their sha256 sums to the peer over the link (TCP 7001).
#   restore  receives them, checks the sums, loads them into a fresh `vmm --api-sock` with
#            resume_vm, and checks that the guest carries on from the tick it was paused at
#            and answers on its console; it also prints the state file in hex
#            (`snap-restore: state-hex: ...`) for xtask to carry to the hosts below.
#   refuse-model, refuse-frequency
#            in a host of another CPU model (same counter frequency), or of the same model
#            with another counter frequency: load that state file ($SNAP_STATE, whose sha256
#            is $SNAP_STATE_SHA256) with a sparse memory file of the guest's size (the host is
#            checked before guest memory is used), and expect a 400 naming the ID-register
#            fields, or both frequencies ($SNAP_FREQ_HERE, $SNAP_FREQ_SAVED); the process
#            still answers, has not started, and then loads a snapshot taken on this host.
# Its own lines start with `snap-ROLE:`; a failed check prints `FAILED:`, the tails of the vmm
# consoles and logs, and exits 1.
set -u
: "${ROLE:?}" "${PEER_ADDR:?}" "${GUEST_KERNEL:?}" "${GUEST_INITRD:?}"
D=/tmp/snap
MEM_MIB=128
mkdir -p "$D"
say() { echo "snap-$ROLE: $*"; }
PIDS=()
fail() {
    say "FAILED: $*"
    for f in "$D"/*.console "$D"/*.stderr; do
        [ -s "$f" ] && { say "--- tail of $f"; tail -n 15 "$f" | tr -d '\r'; }
    done
    # No guest started here outlives the check (the host goes on with other checks).
    [ ${#PIDS[@]} -gt 0 ] && kill -KILL "${PIDS[@]}" 2>/dev/null
    exit 1
}

# api SOCK METHOD PATH [BODY]: sets CODE and BODY.
api() {
    local out
    out=$(curl -sS --unix-socket "$1" -X "$2" -H 'Content-Type: application/json' \
        ${4:+--data-binary "$4"} -w '\n%{http_code}' "http://localhost$3")
    CODE=${out##*$'\n'}
    BODY=${out%$'\n'*}
}

# start NAME: a `vmm --api-sock` whose console goes to $D/NAME.console and whose console input
# is fd 3; sets SOCK and PID.
start() {
    SOCK=$D/$1.sock
    mkfifo "$D/$1.in"
    vmm --api-sock "$SOCK" <"$D/$1.in" >"$D/$1.console" 2>"$D/$1.stderr" &
    PID=$!
    PIDS+=("$PID")
    exec 3>"$D/$1.in"
    for _ in $(seq 600); do
        api "$SOCK" GET / 2>/dev/null
        [ "$CODE" = 200 ] && return 0
        sleep 0.1
    done
    fail "the API socket of $1 never answered"
}

# wait_line FILE REGEX SECONDS: waits until a console line matches.
wait_line() {
    for _ in $(seq $(($3 * 2))); do
        tr -d '\r' <"$1" | grep -Eq "$2" && return 0
        sleep 0.5
    done
    return 1
}

# ticks FILE: every tick-N the console shows, one number a line, in order.
ticks() { tr -d '\r' <"$1" | sed -n 's/^tick-\([0-9][0-9]*\)$/\1/p'; }

source_role() {
    start a
    boot_guest
    wait_line "$D/a.console" '^GUEST_READY' 300 || fail "the guest never printed GUEST_READY"
    echo '(i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.2; done) &' >&3
    wait_line "$D/a.console" '^tick-5$' 120 || fail "the guest's loop never reached tick-5"
    api "$SOCK" PATCH /vm '{"state": "Paused"}'
    [ "$CODE" = 204 ] || fail "pause: $CODE $BODY"
    sleep 1
    local tick
    tick=$(ticks "$D/a.console" | sort -n | tail -n 1)
    api "$SOCK" PUT /snapshot/create "{\"snapshot_type\": \"Full\", \"snapshot_path\": \"$D/vm.state\", \"mem_file_path\": \"$D/vm.mem\"}"
    [ "$CODE" = 204 ] || fail "snapshot/create: $CODE $BODY"
    kill -KILL "$PID"
    wait "$PID" 2>/dev/null
    echo "$tick" >"$D/tick"
    (cd "$D" && sha256sum vm.state vm.mem tick >SHA256SUMS) || fail "sha256sum"
    say "paused at tick-$tick; state $(stat -c %s "$D/vm.state") bytes, memory $(stat -c %s "$D/vm.mem") bytes ($(du -k "$D/vm.mem" | cut -f1) KiB allocated)"
    sed "s/^/snap-$ROLE: sent /" "$D/SHA256SUMS"
    local i
    for i in $(seq 300); do
        tar -C "$D" -cf - vm.state vm.mem tick SHA256SUMS | socat -u - "TCP:$PEER_ADDR:7001" 2>/dev/null && break
        sleep 1
    done
    [ "$i" -lt 300 ] || fail "the peer never took the files"
    # The peer reports back when it is done, so this host stays up until then.
    local verdict
    verdict=$(timeout 900 socat -u TCP-LISTEN:7002,reuseaddr -)
    say "the peer says: $verdict"
    [ "$verdict" = "restored" ] || fail "the peer did not restore the snapshot"
}

restore_role() {
    # The source waits for a verdict: whatever ends this role sends one.
    report() {
        for _ in $(seq 60); do echo "$1" | socat -u - "TCP:$PEER_ADDR:7002" 2>/dev/null && return; sleep 1; done
    }
    trap 'report failed' EXIT
    timeout 600 socat -u TCP-LISTEN:7001,reuseaddr - | tar -C "$D" -xf - || fail "receiving the files"
    (cd "$D" && sha256sum -c SHA256SUMS) | sed "s/^/snap-$ROLE: /"
    [ "${PIPESTATUS[0]}" = 0 ] || fail "the files differ from what the source sent"
    say "state-sha256: $(sha256sum "$D/vm.state" | cut -d' ' -f1)"
    od -An -v -tx1 "$D/vm.state" | tr -d ' ' | sed "s/^/snap-$ROLE: state-hex: /"
    local tick
    tick=$(cat "$D/tick")
    start b
    api "$SOCK" PUT /snapshot/load "{\"snapshot_path\": \"$D/vm.state\", \"mem_backend\": {\"backend_type\": \"File\", \"backend_path\": \"$D/vm.mem\"}, \"resume_vm\": true}"
    [ "$CODE" = 204 ] || fail "snapshot/load: $CODE $BODY"
    api "$SOCK" GET /
    case "$BODY" in *'"Running"'*) ;; *) fail "GET / after the load: $BODY" ;; esac
    local t
    for _ in $(seq 240); do
        t=$(ticks "$D/b.console" | sort -n | tail -n 1)
        [ -n "$t" ] && [ "$t" -ge $((tick + 3)) ] && break
        sleep 0.5
    done
    local first
    first=$(ticks "$D/b.console" | head -n 1)
    say "paused at tick-$tick; after the load: tick-${first:-none} to tick-${t:-none}"
    [ -n "$first" ] || fail "the guest printed no tick after the load"
    # The first whole line after the load is the next tick, or the one after if the pause
    # cut a line in two: the loop carries on, it does not start again.
    [ "$first" -gt "$tick" ] && [ "$first" -le $((tick + 2)) ] ||
        fail "the loop did not carry on from tick-$tick: tick-$first came first"
    [ "$t" -ge $((tick + 3)) ] || fail "the loop stopped at tick-$t"
    echo 'echo pong-$((40+2))' >&3
    wait_line "$D/b.console" '^pong-42$' 120 || fail "the guest did not answer on its console"
    echo 'poweroff -f' >&3
    wait "$PID"
    local rc=$?
    [ "$rc" = 0 ] || fail "vmm exited with $rc after the guest powered off"
    trap - EXIT
    report restored
    say "ok: restored in a second host of the same CPU model"
}

# boot_guest: configures and starts the guest in the vmm at $SOCK.
boot_guest() {
    api "$SOCK" PUT /boot-source "{\"kernel_image_path\": \"$GUEST_KERNEL\", \"initrd_path\": \"$GUEST_INITRD\", \"boot_args\": \"console=ttyS0 rdinit=/init quiet\"}"
    [ "$CODE" = 204 ] || fail "boot-source: $CODE $BODY"
    api "$SOCK" PUT /machine-config "{\"vcpu_count\": 1, \"mem_size_mib\": $MEM_MIB}"
    [ "$CODE" = 204 ] || fail "machine-config: $CODE $BODY"
    api "$SOCK" PUT /actions '{"action_type": "InstanceStart"}'
    [ "$CODE" = 204 ] || fail "InstanceStart: $CODE $BODY"
}

refuse_role() {
    : "${SNAP_STATE:?}" "${SNAP_STATE_SHA256:?}"
    cp "$SNAP_STATE" "$D/vm.state"
    local sum
    sum=$(sha256sum "$D/vm.state" | cut -d' ' -f1)
    [ "$sum" = "$SNAP_STATE_SHA256" ] || fail "the carried state file has sha256 $sum, not $SNAP_STATE_SHA256"
    dd if=/dev/zero of="$D/vm.mem" bs=1M count=0 seek="$MEM_MIB" 2>/dev/null || fail "making the memory file"
    start r
    local r_sock=$SOCK r_pid=$PID
    exec 4>&3 # keeps its console input open while fd 3 goes to the next vmm
    api "$r_sock" PUT /snapshot/load "{\"snapshot_path\": \"$D/vm.state\", \"mem_backend\": {\"backend_type\": \"File\", \"backend_path\": \"$D/vm.mem\"}, \"resume_vm\": true}"
    say "load answered $CODE: $BODY"
    [ "$CODE" = 400 ] || fail "the load of a snapshot from another host answered $CODE, not 400"
    case "$ROLE" in
    refuse-model)
        case "$BODY" in *ID_AA64*'bits ['*) ;; *) fail "the refusal does not name an ID_AA64 register's bits" ;; esac
        case "$BODY" in *frequency*|*' Hz '*) fail "the refusal names the counter, not the CPU model" ;; esac
        ;;
    refuse-frequency)
        : "${SNAP_FREQ_HERE:?}" "${SNAP_FREQ_SAVED:?}"
        case "$BODY" in *"$SNAP_FREQ_HERE Hz"*"$SNAP_FREQ_SAVED Hz"*) ;; *)
            fail "the refusal does not name both frequencies ($SNAP_FREQ_HERE Hz here, $SNAP_FREQ_SAVED Hz saved)" ;; esac
        case "$BODY" in *ID_AA64*|*MIDR*) fail "the refusal names ID registers, not the counter" ;; esac
        ;;
    esac
    kill -0 "$r_pid" 2>/dev/null || fail "vmm exited after refusing the load"
    api "$r_sock" GET /
    [ "$CODE" = 200 ] || fail "GET / after the refusal: $CODE $BODY"
    case "$BODY" in *'"Not started"'*) ;; *) fail "GET / after the refusal: $BODY" ;; esac
    # A snapshot of this host loads into the same process: the refusal changed nothing.
    start own
    boot_guest
    api "$SOCK" PATCH /vm '{"state": "Paused"}'
    [ "$CODE" = 204 ] || fail "pause: $CODE $BODY"
    api "$SOCK" PUT /snapshot/create "{\"snapshot_type\": \"Full\", \"snapshot_path\": \"$D/own.state\", \"mem_file_path\": \"$D/own.mem\"}"
    [ "$CODE" = 204 ] || fail "snapshot/create on this host: $CODE $BODY"
    kill -KILL "$PID"
    wait "$PID" 2>/dev/null
    rm -f "$D/vm.mem"
    api "$r_sock" PUT /snapshot/load "{\"snapshot_path\": \"$D/own.state\", \"mem_backend\": {\"backend_type\": \"File\", \"backend_path\": \"$D/own.mem\"}, \"resume_vm\": false}"
    [ "$CODE" = 204 ] || fail "loading this host's own snapshot after the refusal: $CODE $BODY"
    api "$r_sock" GET /
    case "$BODY" in *'"Paused"'*) ;; *) fail "GET / after loading this host's snapshot: $BODY" ;; esac
    kill -KILL "$r_pid"
    wait "$r_pid" 2>/dev/null
    rm -f "$D/own.mem"
    say "ok: refused with 400, still answering, not started, and then loaded this host's snapshot"
}

case "$ROLE" in
source) source_role ;;
restore) restore_role ;;
refuse-model | refuse-frequency) refuse_role ;;
*) fail "unknown role $ROLE" ;;
esac
