#!/usr/bin/env bash
# A suspended disk holds I/O until resume; a table loaded while suspended takes over on
# resume (data lands in the new image); `udm clear` drops a loaded table.
source "$(dirname "$0")/functions.sh"

KiB=1024
MiB=$((1024 * 1024))
A=$(make_image a.img 4M)
B=$(make_image b.img 4M)
C=$(make_image c.img 4M)
TA="0 4096 linear $A 0"
TB="0 4096 linear $B 1024"
TC="0 4096 linear $C 0"

start_daemon
udm_ok create s --table "$TA"
D=$(disk_file s)
make_pattern "$WORK/p1" "$MiB" 21
make_pattern "$WORK/p2" "$MiB" 22
make_pattern "$WORK/p3" "$MiB" 23

# start_held_writer SRC DISKOFF: a background direct writer of 1 MiB; sets W
start_held_writer() {
    write_at "$1" 0 "$D" "$2" "$MiB" direct 2>"$WORK/writer.err" &
    W=$!
    track_pid "$W"
}

# expect_held PID WHAT: still running after ~1.5 s
expect_held() {
    sleep 1.5
    pid_alive "$1" || fail "$2 finished while the disk was suspended"
}

# expect_released PID WHAT: finishes within 20 s with status 0
expect_released() {
    wait_gone "$1" 20 || fail "$2 still blocked 20 s after resume"
    local rc=0
    wait "$1" || rc=$?
    ((rc == 0)) || fail "$2 failed after resume (status $rc): $(cat "$WORK/writer.err" 2>/dev/null)"
}

log "suspend holds a writer until resume"
udm_ok suspend s
start_held_writer "$WORK/p1" $((512 * KiB))
expect_held "$W" "writer"
expect_zero "$A" 0 "$((4 * MiB))" "A while the writer is held"
udm_ok resume s
expect_released "$W" "writer"
expect_same "$A" $((512 * KiB)) "$WORK/p1" 0 "$MiB" "held write in A after resume"
expect_zero "$A" 0 $((512 * KiB)) "A before the write"
expect_zero "$A" $((1536 * KiB)) $((4 * MiB - 1536 * KiB)) "A after the write"

log "suspend holds a reader until resume"
udm_ok suspend s
read_at "$D" $((512 * KiB)) 8192 direct >"$WORK/read.out" 2>"$WORK/reader.err" &
R=$!
track_pid "$R"
expect_held "$R" "reader"
udm_ok resume s
expect_released "$R" "reader"
expect_same "$WORK/read.out" 0 "$WORK/p1" 0 8192 "held read after resume"

log "load while suspended; resume switches the mapping to B"
cp "$A" "$WORK/a.before"
udm_ok suspend s
udm_ok load s --table "$TB"
expect_table s "$TA"                      # still the live one
start_held_writer "$WORK/p2" 0
expect_held "$W" "writer (new table)"
expect_zero "$B" 0 "$((4 * MiB))" "B while the writer is held"
udm_ok resume s
expect_released "$W" "writer (new table)"
expect_table s "$TB"
expect_same "$B" $((1024 * 512)) "$WORK/p2" 0 "$MiB" "held write in B after resume"
expect_zero "$B" 0 $((1024 * 512)) "B before the write"
expect_zero "$B" $((1024 * 512 + MiB)) $((4 * MiB - 1024 * 512 - MiB)) "B after the write"
cmp -s "$A" "$WORK/a.before" || fail "A changed after the table moved to B"
expect_same "$D" 0 "$WORK/p2" 0 "$MiB" "read through the new mapping"

log "clear drops the loaded table"
udm_ok suspend s
udm_ok load s --table "$TC"
udm_ok clear s
udm_ok resume s
expect_table s "$TB"
write_at "$WORK/p3" 0 "$D" "$MiB" "$MiB" direct || fail "write after clear failed"
expect_same "$B" $((1024 * 512 + MiB)) "$WORK/p3" 0 "$MiB" "write after clear lands in B"
expect_zero "$C" 0 "$((4 * MiB))" "C after clear"

udm_ok remove s
stop_daemon
