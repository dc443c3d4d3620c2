#!/usr/bin/env bash
# Connecting to an NBD export may take up to --nbd-timeout; it must not hold the registry lock.
# The server here accepts TCP connections and never answers the handshake (nbdkit stopped with
# SIGSTOP right after it listens: the kernel still completes the TCP handshake). While a
# `create`, a `load` and a `snapshot create --cow` wait on it, every other command answers
# and another disk reads its data. Each one then fails with one line naming the URI and
# leaves nothing behind: no disk, no loaded table, no snapshot, no connection to the server.
# Every client call made meanwhile is bounded by `timeout`, so a lock held across the connect
# fails the test instead of hanging it.
source "$(dirname "$0")/functions.sh"

MiB=$((1024 * 1024))
SECTORS=$((8 * 2048))
PORT=$(free_port)
URI="nbd://127.0.0.1:$PORT/"
start_nbdkit mute "$PORT" memory 8M
kill -STOP "$(nbd_pid mute)"

O_IMG=$(make_image other.img 8M)
fill_image "$O_IMG" 1
K_IMG=$(make_image keep.img 8M)
B_IMG=$(make_image base.img 8M)
fill_image "$B_IMG" 2
start_daemon --nbd-timeout 20
udm_ok create other --table "0 $SECTORS linear $O_IMG 0"
udm_ok create keep --table "0 $SECTORS linear $K_IMG 0"
udm_ok create base --table "0 $SECTORS linear $B_IMG 0"
OTHER=$(disk_file other)

# quick CMD...: a udm verb that must answer within 10 s.
quick() {
    local rc=0
    timeout -k 2 10 "$UDM_BIN" "$@" >"$WORK/quick.out" 2>&1 || rc=$?
    ((rc != 124 && rc != 137)) || fail "udm $* did not answer within 10 s (the registry lock is held across a connect)"
    ((rc == 0)) || fail "udm $* failed: $(cat "$WORK/quick.out")"
}

# connections: the daemon's TCP connections to the mute server.
connections() {
    ss -Htn state established "dport = :$PORT" | grep -c '' || true
}

log "create, load and snapshot create connect to a server that never answers"
timeout -k 2 60 "$UDM_BIN" create slow --table "0 2048 linear $URI 0" >"$WORK/create.out" 2>&1 &
CREATE=$!
track_pid "$CREATE"
timeout -k 2 60 "$UDM_BIN" load keep --table "0 2048 linear $URI 0" >"$WORK/load.out" 2>&1 &
LOAD=$!
track_pid "$LOAD"
timeout -k 2 60 "$UDM_BIN" snapshot create base snap --cow "$URI" >"$WORK/snapshot.out" 2>&1 &
SNAPSHOT=$!
track_pid "$SNAPSHOT"
for ((i = 0; i < 100; i++)); do
    (($(connections) >= 1)) && break
    sleep 0.1
done
(($(connections) >= 1)) || fail "no command connected to the server"

log "meanwhile every other command answers and another disk reads its data"
quick ls
grep -q '^other' "$WORK/quick.out" || fail "udm ls does not list other: $(cat "$WORK/quick.out")"
quick info other
grep -q '^State: *ACTIVE' "$WORK/quick.out" || fail "udm info other: $(cat "$WORK/quick.out")"
quick suspend other
quick resume other
timeout -k 2 10 dd if="$OTHER" of="$WORK/other.read" bs=1M iflag=direct status=none ||
    fail "reading other did not finish within 10 s"
expect_same "$WORK/other.read" 0 "$O_IMG" 0 $((SECTORS * 512)) "other"
# All three wait at once: none waits for another's connect.
for ((i = 0; i < 100; i++)); do
    (($(connections) >= 3)) && break
    sleep 0.1
done
(($(connections) >= 3)) || fail "the three commands did not all connect to the server: $(connections) connection(s)"
for pid in "$CREATE" "$LOAD" "$SNAPSHOT"; do
    pid_alive "$pid" || fail "a command finished before its connect timed out: $(cat "$WORK"/{create,load,snapshot}.out)"
done

log "after the timeout each fails with one line naming the URI; nothing is left behind"
for what in create load snapshot; do
    pid=$CREATE
    [[ $what == load ]] && pid=$LOAD
    [[ $what == snapshot ]] && pid=$SNAPSHOT
    rc=0
    wait "$pid" || rc=$?
    ((rc != 0 && rc != 124 && rc != 137)) || fail "$what: status $rc: $(cat "$WORK/$what.out")"
    [[ $(grep -c '' "$WORK/$what.out") == 1 ]] || fail "$what: not one line: $(cat "$WORK/$what.out")"
    grep -qF -- "$URI" "$WORK/$what.out" || fail "$what: the URI is not named in: $(cat "$WORK/$what.out")"
done
! disk_listed slow || fail "disk 'slow' was created"
! disk_listed snap || fail "disk 'snap' was created"
! disk_listed base-real || fail "base-real is left over"
udm info keep | grep -q 'Tables present: *LIVE$' || fail "the refused load left a table loaded: $(udm info keep)"
expect_table keep "0 $SECTORS linear $K_IMG 0"
expect_table base "0 $SECTORS linear $B_IMG 0"
read_at "$(disk_file base)" 0 $((SECTORS * 512)) direct >"$WORK/base.read"
expect_same "$WORK/base.read" 0 "$B_IMG" 0 $((SECTORS * 512)) "base"
! grep -qE '"(slow|snap)"' "$STATE/devices.json" || fail "state was saved for slow or snap: $(cat "$STATE/devices.json")"
for ((i = 0; i < 100; i++)); do
    (($(connections) == 0)) && break
    sleep 0.1
done
(($(connections) == 0)) || fail "the daemon keeps $(connections) connection(s) to the server"

udm_ok remove other
udm_ok remove keep
udm_ok remove base
stop_daemon
