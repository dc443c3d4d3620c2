#!/usr/bin/env bash
# linear, error, linear: I/O inside the error range fails with EIO and changes nothing;
# I/O in the linear ranges works and returns the images' bytes.
source "$(dirname "$0")/functions.sh"

MiB=$((1024 * 1024))
A=$(make_image a.img 4M)
B=$(make_image b.img 4M)
fill_image "$A" 11
fill_image "$B" 12
# disk [0,1M) -> A@0; [1M,2M) error; [2M,3M) -> B@512K
TABLE="0 2048 linear $A 0
2048 2048 error
4096 2048 linear $B 1024"
ERR_START=$MiB
ERR_END=$((2 * MiB))

start_daemon
udm_ok create e --table "$TABLE"
D=$(disk_file e)
expect_size "$D" $((3 * MiB))
expect_table e "$TABLE"
grep -q '^2048 2048 error' <<<"$(udm status e)" || fail "udm status e has no error line: $(udm status e)"
sha_a=$(sha "$A")
sha_b=$(sha "$B")

# expect_read_eio OFF LEN [IFLAGS]: reading LEN bytes at OFF fails with Input/output error
expect_read_eio() {
    local off=$1 len=$2 fl=${3:-direct} rc=0
    dd if="$D" of="$WORK/out" bs="$len" iflag=skip_bytes${fl:+,$fl} skip="$off" count=1 \
        status=none 2>"$WORK/dd.err" || rc=$?
    ((rc != 0)) || fail "read of $len bytes at $off ($fl) succeeded inside the error range"
    grep -q 'Input/output error' "$WORK/dd.err" ||
        fail "read at $off ($fl): expected Input/output error, got: $(cat "$WORK/dd.err")"
}

# expect_write_eio OFF LEN [OFLAGS]
expect_write_eio() {
    local off=$1 len=$2 fl=${3:-direct} rc=0
    head -c "$len" /dev/urandom >"$WORK/junk"
    dd if="$WORK/junk" of="$D" bs="$len" oflag=seek_bytes${fl:+,$fl} seek="$off" count=1 \
        conv=notrunc,fsync status=none 2>"$WORK/dd.err" || rc=$?
    ((rc != 0)) || fail "write of $len bytes at $off ($fl) succeeded inside the error range"
}

log "reads inside the error range fail with EIO"
expect_read_eio "$ERR_START" 4096
expect_read_eio $((ERR_START + 512 * 100)) 512
expect_read_eio $((ERR_END - 512)) 512
expect_read_eio "$ERR_START" "$MiB"
expect_read_eio $((ERR_START - 4096)) 8192            # straddles linear -> error
expect_read_eio $((ERR_END - 4096)) 8192              # straddles error -> linear
expect_read_eio $((ERR_START + 4096)) 4096 ""         # buffered

log "reads in the linear ranges return the images' bytes"
read_at "$D" 0 "$MiB" direct >"$WORK/r1" || fail "direct read of the first linear range failed"
expect_same "$WORK/r1" 0 "$A" 0 "$MiB" "first linear range"
read_at "$D" "$ERR_END" "$MiB" direct >"$WORK/r2" || fail "direct read of the second linear range failed"
expect_same "$WORK/r2" 0 "$B" $((1024 * 512)) "$MiB" "second linear range"
read_at "$D" $((ERR_START - 512)) 512 direct >"$WORK/r3" || fail "read of the sector before the error range failed"
expect_same "$WORK/r3" 0 "$A" $((ERR_START - 512)) 512 "sector before the error range"
read_at "$D" "$ERR_END" 512 direct >"$WORK/r4" || fail "read of the sector after the error range failed"
expect_same "$WORK/r4" 0 "$B" $((1024 * 512)) 512 "sector after the error range"
read_at "$D" 1000 5000 >"$WORK/r5" || fail "buffered unaligned read in the first linear range failed"
expect_same "$WORK/r5" 0 "$A" 1000 5000 "buffered unaligned read"

log "writes inside the error range fail and change nothing"
expect_write_eio "$ERR_START" 4096
expect_write_eio $((ERR_START + 512 * 7)) 512
expect_write_eio $((ERR_END - 65536)) 65536
expect_write_eio $((ERR_START + 12345)) 1000 ""       # buffered + fsync
[[ $(sha "$A") == "$sha_a" ]] || fail "image A changed after failed writes"
[[ $(sha "$B") == "$sha_b" ]] || fail "image B changed after failed writes"

log "the linear ranges still take writes"
cp "$A" "$WORK/a.orig"
cp "$B" "$WORK/b.orig"
make_pattern "$WORK/p" 8192 5
# plain direct writes (no fsync: that is checked separately below)
dd if="$WORK/p" of="$D" bs=8192 count=1 oflag=seek_bytes,direct seek=$((ERR_START - 8192)) conv=notrunc status=none ||
    fail "write just before the error range failed"
dd if="$WORK/p" of="$D" bs=8192 count=1 oflag=seek_bytes,direct seek="$ERR_END" conv=notrunc status=none ||
    fail "write just after the error range failed"
expect_same "$A" $((ERR_START - 8192)) "$WORK/p" 0 8192 "write before the error range, in A"
expect_same "$B" $((1024 * 512)) "$WORK/p" 0 8192 "write after the error range, in B"
expect_same "$A" 0 "$WORK/a.orig" 0 $((ERR_START - 8192)) "A before the write"
expect_same "$A" "$ERR_START" "$WORK/a.orig" "$ERR_START" $((4 * MiB - ERR_START)) "A after the write"
expect_same "$B" 0 "$WORK/b.orig" 0 $((1024 * 512)) "B before the write"
expect_same "$B" $((1024 * 512 + 8192)) "$WORK/b.orig" $((1024 * 512 + 8192)) $((4 * MiB - 1024 * 512 - 8192)) "B after the write"

log "fsync (flush) succeeds: as in dm, the error target takes no flush bios"
dd if="$WORK/p" of="$D" bs=4096 count=1 conv=notrunc,fsync status=none 2>"$WORK/dd.err" ||
    fail "write + fsync to the first linear range failed: $(cat "$WORK/dd.err")"
expect_same "$A" 0 "$WORK/p" 0 4096 "fsynced write in A"
stop_daemon
