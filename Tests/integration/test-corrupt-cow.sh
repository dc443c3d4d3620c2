#!/usr/bin/env bash
# A corrupt COW file must not take the daemon down: a record whose origin chunk is 2^64-1
# (found by fuzzing the store reader) loads, and merging it fails with an error instead of
# crashing the daemon on the chunk arithmetic.
source "$(dirname "$0")/functions.sh"

O=$(make_image o.img 4M)
start_daemon
udm_ok create origin --table "0 8192 linear $O 0"
udm_ok snapshot create origin s --cow "$IMG/s.cow" --size 1M --chunk-size 8
make_pattern "$WORK/p" 4096 61
dd if="$WORK/p" of="$(disk_file origin)" bs=4096 oflag=direct conv=notrunc status=none || fail "origin write failed"
# area 0 is chunk 1 (byte 4096): its first record is {old 0, new 2}
[[ $(od -A n -t u8 -j 4096 -N 16 "$IMG/s.cow" | tr -s ' ') == " 0 2" ]] ||
    fail "unexpected first record: $(od -A n -t u8 -j 4096 -N 16 "$IMG/s.cow")"
stop_daemon

log "the record's old chunk becomes 2^64-1"
printf '\377\377\377\377\377\377\377\377' | dd of="$IMG/s.cow" bs=1 seek=4096 conv=notrunc status=none
start_daemon
disk_listed s || fail "the snapshot with a corrupt record was not restored"
expect_udm_error "$WORK/err" snapshot merge s
grep -q "merging into origin failed" "$WORK/err" || fail "unexpected merge error: $(cat "$WORK/err")"
pid_alive "$DAEMON_PID" || fail "the daemon died merging a corrupt COW file"
disk_listed origin || fail "udm ls does not answer after the failed merge"
read_at "$(disk_file origin)" 0 4096 direct >"$WORK/r" || fail "the origin is not readable after the failed merge"
expect_same "$WORK/r" 0 "$WORK/p" 0 4096 "origin data after the failed merge"
stop_daemon
