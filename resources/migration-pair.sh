#!/bin/bash
# Live migration across linked emulated hosts, run by `cargo xtask test` and
# `cargo xtask pair --checks` (xtask/src/pair_checks.rs, docs/testing.md). ROLE is set before
# this text:
#   trip-a   (host a, same CPU model and counter as b) boots a 1 vCPU, 128 MiB guest, with
#            the guest rootfs image attached read-only (the same path on both hosts), whose
#            shell prints tick-N five times a second; sends it live to host b's `vmm receive`
#            with `vmm send`; then runs `vmm receive` itself, takes the guest back from b and
#            checks that it carries on counting and answers on its console.
#   trip-b   (host b) runs `vmm receive`, checks the guest carries on counting there, and
#            sends it back to a with `vmm send`.
#   refuse-source
#            (a host of the standard model and counter) boots the same guest and sends it to
#            `vmm receive` on $MODEL_ADDR (another CPU model) and then on $FREQ_ADDR (another
#            counter frequency); each `vmm send` must fail naming the difference, and the
#            guest must still run here afterwards.
#   refuse-dest
#            runs `vmm receive` for that source ($PEER_ADDR), which must exit 1 without
#            running anything, naming ID-register fields (MIG_EXPECT=model) or both counter
#            frequencies ($MIG_FREQ_HERE, $MIG_FREQ_SAVED; MIG_EXPECT=frequency).
# The hosts agree over TCP on the link, one message a connection, kept in an inbox: a host
# whose `vmm receive` listens (its API answers) says "ready ADDR"; a sender then says
# "sent TICK" (its last tick) or "refused WHAT"; a host that fails says "failed", which ends
# its peer's waiting.
# Its own lines start with `mig-ROLE:`; a failed check prints `FAILED:`, the tails of the vmm
# consoles and logs, tells the peer, and exits 1.
set -u
: "${ROLE:?}" "${PEER_ADDR:?}" "${GUEST_KERNEL:?}" "${GUEST_INITRD:?}" "${GUEST_ROOTFS:?}"
D=/tmp/mig
mkdir -p "$D"
say() { echo "mig-$ROLE: $*"; }
PIDS=()
# Ports on the link: where b and a receive the guest, and where a and b hear their peer.
MIG_PORT_B=7100 MIG_PORT_A=7101 CTL_A=7102 CTL_B=7103
# Where this host hears its peer, and where the peer hears it.
case "$ROLE" in
trip-a | refuse-source) HERE=$CTL_A THERE=$CTL_B ;;
*) HERE=$CTL_B THERE=$CTL_A ;;
esac
# Whom to tell when this host fails.
TELL_ON_FAIL=$PEER_ADDR

fail() {
    say "FAILED: $*"
    for f in "$D"/*.console "$D"/*.stderr "$D"/*.out; do
        [ -s "$f" ] && { say "--- tail of $f"; tail -n 15 "$f" | tr -d '\r'; }
    done
    [ ${#PIDS[@]} -gt 0 ] && kill -KILL "${PIDS[@]}" 2>/dev/null
    # A peer waiting for this host's word stops waiting.
    local to
    for to in $TELL_ON_FAIL; do
        for _ in $(seq 10); do echo failed | socat -u - "TCP:$to:$THERE" 2>/dev/null && break; sleep 1; done
    done
    exit 1
}

# Every message a peer sends this host, one a line, in the order they came; a listener keeps
# taking them for the whole role, so none is lost while this host does something else.
INBOX=$D/inbox
NHEARD=0
: >"$INBOX"
socat -u "TCP-LISTEN:$HERE,reuseaddr,fork" "OPEN:$INBOX,append" &
PIDS+=("$!")
trap 'kill "${PIDS[@]}" 2>/dev/null' EXIT

# check_inbox: fails if a peer said it failed (it waits for nothing from this host any more).
check_inbox() {
    ! grep -qx failed "$INBOX" || fail "the peer failed"
}

# tell ADDR MSG: one message to the peer at ADDR, which may not listen yet.
tell() {
    for _ in $(seq 600); do
        echo "$2" | socat -u - "TCP:$1:$THERE" 2>/dev/null && return 0
        check_inbox
        sleep 1
    done
    fail "$1 never took the message '$2'"
}

# hear SECONDS: the next message from a peer; sets MSG.
hear() {
    local i
    for i in $(seq $(($1 * 2))); do
        [ "$(wc -l <"$INBOX")" -gt "$NHEARD" ] && break
        sleep 0.5
    done
    NHEARD=$((NHEARD + 1))
    MSG=$(sed -n "${NHEARD}p" "$INBOX")
    [ -n "$MSG" ] || fail "no word from the peer within $1 s"
    [ "$MSG" != failed ] || fail "the peer failed"
}

# api SOCK METHOD PATH: sets CODE and BODY.
api() {
    local out
    out=$(curl -sS --unix-socket "$1" -X "$2" -w '\n%{http_code}' "http://localhost$3")
    CODE=${out##*$'\n'}
    BODY=${out%$'\n'*}
}

# wait_api SOCK: waits until the vmm's API at SOCK answers.
wait_api() {
    for _ in $(seq 600); do
        api "$1" GET / 2>/dev/null
        [ "$CODE" = 200 ] && return 0
        sleep 0.1
    done
    fail "the API socket $1 never answered"
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
last_tick() { ticks "$1" | sort -n | tail -n 1; }

# spawn NAME ARGS...: vmm ARGS in the background, its console $D/NAME.console, its stderr
# $D/NAME.stderr, its console input fd 3 (a FIFO kept open); sets PID.
spawn() {
    local name=$1
    shift
    mkfifo "$D/$name.in"
    vmm "$@" <"$D/$name.in" >"$D/$name.console" 2>"$D/$name.stderr" &
    PID=$!
    PIDS+=("$PID")
    exec 3>"$D/$name.in"
}

# boot NAME: the counting guest in a `vmm run` with its API at $D/NAME.sock; sets PID.
boot() {
    spawn "$1" run --kernel "$GUEST_KERNEL" --initrd "$GUEST_INITRD" \
        --cmdline 'console=ttyS0 rdinit=/init quiet' --vcpus 1 --memory 128 \
        --drive "id=rootfs,path=$GUEST_ROOTFS,ro" --api-sock "$D/$1.sock"
    wait_api "$D/$1.sock"
    wait_line "$D/$1.console" '^GUEST_READY' 300 || fail "the guest never printed GUEST_READY"
    echo '(i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.2; done) &' >&3
    wait_line "$D/$1.console" '^tick-5$' 120 || fail "the guest's loop never reached tick-5"
}

# receive NAME PORT: `vmm receive` on PORT with its API at $D/NAME.sock, once it listens;
# sets PID.
receive() {
    spawn "$1" receive --listen "tcp:0.0.0.0:$2" --api-sock "$D/$1.sock"
    wait_api "$D/$1.sock"
}

# send NAME TO: `vmm send` of the guest in the vmm at $D/NAME.sock to TO; sets RC, its output
# in $D/send-NAME.out and .stderr.
send() {
    vmm send --api-sock "$D/$1.sock" --to "$2" >"$D/send-$1.out" 2>"$D/send-$1.stderr"
    RC=$?
    say "vmm send to $2 exited $RC: $(tail -n 1 "$D/send-$1.out") $(tr '\n' ' ' <"$D/send-$1.stderr")"
}

# moved NAME TO PID: checks that `vmm send` of NAME to TO succeeded and that the source vmm
# (PID) exited 0 saying where the guest went.
moved() {
    [ "$RC" = 0 ] || fail "vmm send exited $RC"
    tail -n 1 "$D/send-$1.out" | grep -q "^migrated to $2" || fail "vmm send did not end with 'migrated to $2'"
    local rc
    wait "$3"
    rc=$?
    [ "$rc" = 0 ] || fail "the source vmm exited $rc after the migration"
    grep -q "the guest migrated to" "$D/$1.stderr" || fail "the source vmm did not say where the guest went"
}

# carried_on FILE TICK: the guest's loop goes on in FILE from TICK (the last tick the source
# showed): its first whole tick there is the next one, or the one after if the move cut a
# line in two, and it keeps counting.
carried_on() {
    local t first
    for _ in $(seq 240); do
        t=$(last_tick "$1")
        [ -n "$t" ] && [ "$t" -ge $(($2 + 3)) ] && break
        sleep 0.5
    done
    first=$(ticks "$1" | head -n 1)
    say "tick-$2 before the move; after it tick-${first:-none} to tick-${t:-none}"
    [ -n "$first" ] || fail "the guest printed no tick after the move"
    [ "$first" -gt "$2" ] && [ "$first" -le $(($2 + 2)) ] ||
        fail "the loop did not carry on from tick-$2: tick-$first came first"
    [ "$t" -ge $(($2 + 3)) ] || fail "the loop stopped at tick-$t"
}

trip_a() {
    boot a
    local src=$PID
    hear 600
    [ "$MSG" = "ready $PEER_ADDR" ] || fail "b said '$MSG', not ready"
    send a "tcp:$PEER_ADDR:$MIG_PORT_B"
    moved a "tcp:$PEER_ADDR:$MIG_PORT_B" "$src"
    tell "$PEER_ADDR" "sent $(last_tick "$D/a.console")"
    # Now the guest comes back.
    receive back "$MIG_PORT_A"
    local dst=$PID
    tell "$PEER_ADDR" "ready $SELF_ADDR"
    hear 600
    case "$MSG" in "sent "*) ;; *) fail "b said '$MSG', not sent TICK" ;; esac
    carried_on "$D/back.console" "${MSG#sent }"
    api "$D/back.sock" GET /
    case "$BODY" in *'"Running"'*) ;; *) fail "GET / after the return: $BODY" ;; esac
    echo 'echo pong-$((40+2))' >&3
    wait_line "$D/back.console" '^pong-42$' 120 || fail "the guest did not answer on its console"
    echo 'poweroff -f' >&3
    wait "$dst"
    local rc=$?
    [ "$rc" = 0 ] || fail "vmm receive exited $rc after the guest powered off"
    say "ok: the guest went to $PEER_ADDR and back, counting on, and answered here"
}

trip_b() {
    receive away "$MIG_PORT_B"
    local dst=$PID
    tell "$PEER_ADDR" "ready $SELF_ADDR"
    hear 900
    case "$MSG" in "sent "*) ;; *) fail "a said '$MSG', not sent TICK" ;; esac
    carried_on "$D/away.console" "${MSG#sent }"
    api "$D/away.sock" GET /
    case "$BODY" in *'"Running"'*) ;; *) fail "GET / after the move: $BODY" ;; esac
    hear 600
    [ "$MSG" = "ready $PEER_ADDR" ] || fail "a said '$MSG', not ready"
    send away "tcp:$PEER_ADDR:$MIG_PORT_A"
    moved away "tcp:$PEER_ADDR:$MIG_PORT_A" "$dst"
    tell "$PEER_ADDR" "sent $(last_tick "$D/away.console")"
    say "ok: the guest came here from $PEER_ADDR counting on, and went back"
}

refuse_source() {
    : "${MODEL_ADDR:?}" "${FREQ_ADDR:?}" "${MIG_FREQ_DEST:?}" "${MIG_FREQ_SOURCE:?}"
    TELL_ON_FAIL="$MODEL_ADDR $FREQ_ADDR"
    boot s
    local src=$PID to what t done=""
    # Each destination says when it listens; whichever is first gets the guest first.
    for _ in 1 2; do
        hear 900
        to=${MSG#ready }
        case "$to" in
        "$MODEL_ADDR") what=model ;;
        "$FREQ_ADDR") what=frequency ;;
        *) fail "a peer said '$MSG', not ready $MODEL_ADDR or $FREQ_ADDR" ;;
        esac
        case "$done" in *"$what"*) fail "$to said ready twice" ;; esac
        send s "tcp:$to:$MIG_PORT_B"
        [ "$RC" != 0 ] || fail "vmm send to $to exited 0"
        grep -q "refused the guest" "$D/send-s.stderr" || fail "vmm send does not give the destination's refusal"
        if [ "$what" = model ]; then
            grep -q 'ID_AA64.*bits \[' "$D/send-s.stderr" || fail "the refusal does not name an ID_AA64 register's bits"
            ! grep -Eq 'frequency| Hz ' "$D/send-s.stderr" || fail "the refusal names the counter, not the CPU model"
        else
            grep -q "$MIG_FREQ_DEST Hz here and at $MIG_FREQ_SOURCE Hz" "$D/send-s.stderr" ||
                fail "the refusal does not name both frequencies ($MIG_FREQ_DEST Hz there, $MIG_FREQ_SOURCE Hz here)"
            ! grep -Eq 'ID_AA64|MIDR' "$D/send-s.stderr" || fail "the refusal names ID registers, not the counter"
        fi
        # The guest still runs here: the process lives, says Running, and the loop counts on.
        kill -0 "$src" 2>/dev/null || fail "the source vmm exited after the refusal"
        api "$D/s.sock" GET /
        case "$BODY" in *'"Running"'*) ;; *) fail "GET / after the refusal: $BODY" ;; esac
        t=$(last_tick "$D/s.console")
        wait_line "$D/s.console" "^tick-$((t + 3))\$" 60 || fail "the guest stopped counting at tick-$t after the refusal"
        tell "$to" "refused $what"
        done="$done $what"
        say "ok: refused by the host of another $what, and the guest counts on here (past tick-$((t + 3)))"
    done
    kill -KILL "$src"
    wait "$src" 2>/dev/null
}

refuse_dest() {
    : "${MIG_EXPECT:?}"
    receive r "$MIG_PORT_B"
    local dst=$PID rc i
    tell "$PEER_ADDR" "ready $SELF_ADDR"
    for i in $(seq 900); do
        kill -0 "$dst" 2>/dev/null || break
        check_inbox
        sleep 1
    done
    [ "$i" -lt 900 ] || fail "vmm receive still waits after 900 s"
    wait "$dst"
    rc=$?
    say "vmm receive exited $rc: $(tail -n 3 "$D/r.stderr" | tr '\n' ' ')"
    [ "$rc" = 1 ] || fail "vmm receive exited $rc, not 1, after a guest from another host"
    grep -q "incoming migration failed: refused the guest" "$D/r.stderr" || fail "vmm receive does not say it refused the guest"
    case "$MIG_EXPECT" in
    model) grep -q 'ID_AA64.*bits \[' "$D/r.stderr" || fail "the refusal does not name an ID_AA64 register's bits" ;;
    frequency)
        : "${MIG_FREQ_DEST:?}" "${MIG_FREQ_SOURCE:?}"
        grep -q "$MIG_FREQ_DEST Hz here and at $MIG_FREQ_SOURCE Hz" "$D/r.stderr" || fail "the refusal does not name both frequencies"
        ;;
    esac
    # Nothing ran here: no guest wrote to this console.
    [ ! -s "$D/r.console" ] || fail "the refusing vmm's console shows output: $(head -c 200 "$D/r.console")"
    hear 300
    [ "$MSG" = "refused $MIG_EXPECT" ] || fail "the source said '$MSG', not 'refused $MIG_EXPECT'"
    say "ok: refused the guest of another $MIG_EXPECT (exit 1, nothing ran) and the source kept it"
}

case "$ROLE" in
trip-a) trip_a ;;
trip-b) trip_b ;;
refuse-source) refuse_source ;;
refuse-dest) refuse_dest ;;
*) fail "unknown role $ROLE" ;;
esac
