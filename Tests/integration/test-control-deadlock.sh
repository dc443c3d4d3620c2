#!/usr/bin/env bash
# A command that waits for held I/O must not wedge the control plane. `data` is linear over
# MOUNT/low; with low suspended a write to data is held in low, so `snapshot create data`
# (which suspends data) waits for it. Meanwhile every other command answers, a second
# command on data is told it is busy, and `udm resume low` ends the wait: the snapshot is
# made and holds the write. A client that gives up (killed while waiting) leaves no half-done
# change: the daemon completes the command. Every client call is bounded by `timeout`, so a
# deadlock fails the test instead of hanging it.
source "$(dirname "$0")/functions.sh"

MiB=$((1024 * 1024))
L=$(make_image low.img 8M)
SECTORS=$((8 * 2048))
start_daemon
udm_ok create low --table "0 $SECTORS linear $L 0"
udm_ok create data --table "0 $SECTORS linear $MNT/low 0"
D=$(disk_file data)

# quick CMD...: a udm verb that must answer within 10 s.
quick() {
    local rc=0
    timeout -k 2 10 "$UDM_BIN" "$@" >"$WORK/quick.out" 2>&1 || rc=$?
    ((rc != 124 && rc != 137)) || fail "udm $* did not answer within 10 s (control plane wedged)"
    return "$rc"
}

# wait_for WHAT CMD...: poll CMD (bounded, 20 s) until it succeeds.
wait_for() {
    local what=$1 i
    shift
    for ((i = 0; i < 200; i++)); do
        "$@" && return 0
        sleep 0.1
    done
    fail "timed out waiting for $what"
}
in_flight() { quick stats "$1" && grep -q "^$1: 1 in flight" "$WORK/quick.out"; }
suspended() { quick info "$1" && grep -q '^State: *SUSPENDED' "$WORK/quick.out"; }

# held_write SEED OFFSET: a background direct write of 1 MiB to data, held in suspended low.
held_write() {
    make_pattern "$WORK/p$1" "$MiB" "$1"
    write_at "$WORK/p$1" 0 "$D" "$2" "$MiB" direct 2>"$WORK/writer.err" &
    W=$!
    track_pid "$W"
    wait_for "the write to be held in low" in_flight data
}

log "a write to data is held in low; snapshot create data waits for it"
quick suspend low || fail "suspend low: $(cat "$WORK/quick.out")"
held_write 1 $((2 * MiB))
timeout -k 2 60 "$UDM_BIN" snapshot create data snap --cow "$IMG/snap.cow" >"$WORK/create.out" 2>&1 &
C=$!
track_pid "$C"
wait_for "snapshot create to suspend data" suspended data
pid_alive "$C" || fail "snapshot create finished while the write was held: $(cat "$WORK/create.out")"

log "meanwhile every other command answers"
quick ls || fail "udm ls failed while snapshot create waits"
grep -q '^low' "$WORK/quick.out" || fail "udm ls: $(cat "$WORK/quick.out")"
quick table low || fail "udm table low failed while snapshot create waits"
quick info data || fail "udm info data failed while snapshot create waits"
quick snapshot list || fail "udm snapshot list failed while snapshot create waits"
rc=0
quick remove data || rc=$?
((rc != 0)) || fail "udm remove data succeeded while snapshot create was working on it"
grep -q "disk data is busy: snapshot create in progress" "$WORK/quick.out" ||
    fail "remove data while busy: $(cat "$WORK/quick.out")"
rc=0
quick snapshot create data other --cow "$IMG/other.cow" || rc=$?
((rc != 0)) || fail "a second snapshot create of data succeeded while the first was waiting"
grep -q "busy" "$WORK/quick.out" || fail "second snapshot create: $(cat "$WORK/quick.out")"
[[ ! -e $IMG/other.cow ]] || fail "the refused snapshot create made its COW file"

log "resume low ends the wait; both the write and snapshot create complete"
quick resume low || fail "resume low: $(cat "$WORK/quick.out")"
wait_gone "$C" 30 || fail "snapshot create still waiting 30 s after resume low"
rc=0
wait "$C" || rc=$?
((rc == 0)) || fail "snapshot create failed (status $rc): $(cat "$WORK/create.out")"
wait_gone "$W" 30 || fail "the held write still blocked after resume low"
rc=0
wait "$W" || rc=$?
((rc == 0)) || fail "the held write failed (status $rc): $(cat "$WORK/writer.err")"
disk_listed snap || fail "snap not listed after snapshot create"
expect_table data "0 $SECTORS snapshot-origin $MNT/data-real"
expect_same "$L" $((2 * MiB)) "$WORK/p1" 0 "$MiB" "the held write in low's image"
expect_same "$(disk_file snap)" $((2 * MiB)) "$WORK/p1" 0 "$MiB" "the held write in the snapshot"
expect_same "$D" $((2 * MiB)) "$WORK/p1" 0 "$MiB" "the held write read through data"

log "a client killed while its command waits: the daemon completes the command"
quick suspend low || fail "suspend low: $(cat "$WORK/quick.out")"
held_write 2 $((4 * MiB))
timeout -k 2 60 "$UDM_BIN" snapshot create data snap2 --cow "$IMG/snap2.cow" >"$WORK/create2.out" 2>&1 &
C=$!
track_pid "$C"
wait_for "snapshot create to suspend data" suspended data
kill -INT "$C"
wait_gone "$C" 10 || fail "the snapshot create client ignored SIGINT"
quick ls || fail "udm ls failed after the client gave up"
quick resume low || fail "resume low: $(cat "$WORK/quick.out")"
wait_for "snap2 to be created" disk_listed snap2
wait_for "data to be resumed" eval '! suspended data'
wait_gone "$W" 30 || fail "the second held write still blocked after resume low"
expect_same "$(disk_file snap2)" $((4 * MiB)) "$WORK/p2" 0 "$MiB" "the held write in snap2"
expect_same "$(disk_file snap)" $((4 * MiB)) /dev/zero 0 "$MiB" "snap keeps its point in time"
udm snapshot list >"$WORK/list" || fail "snapshot list failed"
grep -Eq '^data +snap2 ' "$WORK/list" || fail "snapshot list: $(cat "$WORK/list")"

log "snapshot remove waits the same way, without wedging anything"
quick suspend low || fail "suspend low: $(cat "$WORK/quick.out")"
held_write 3 $((6 * MiB))
timeout -k 2 60 "$UDM_BIN" snapshot remove snap2 >"$WORK/remove.out" 2>&1 &
C=$!
track_pid "$C"
wait_for "snapshot remove to suspend data" suspended data
quick ls || fail "udm ls failed while snapshot remove waits"
quick snapshot list || fail "udm snapshot list failed while snapshot remove waits"
quick resume low || fail "resume low: $(cat "$WORK/quick.out")"
wait_gone "$C" 30 || fail "snapshot remove still waiting 30 s after resume low"
rc=0
wait "$C" || rc=$?
((rc == 0)) || fail "snapshot remove failed (status $rc): $(cat "$WORK/remove.out")"
wait_gone "$W" 30 || fail "the third held write still blocked after resume low"
disk_listed snap2 && fail "snap2 still listed after snapshot remove"
expect_same "$L" $((6 * MiB)) "$WORK/p3" 0 "$MiB" "the third held write in low's image"
expect_same "$(disk_file snap)" $((6 * MiB)) /dev/zero 0 "$MiB" "snap keeps its point in time"
