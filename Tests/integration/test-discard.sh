#!/usr/bin/env bash
# fallocate punch-hole on MOUNT/NAME is a discard: the range reads zeros afterwards, through
# the disk and in the image; its neighbours keep their bytes. fsync (flush) succeeds.
source "$(dirname "$0")/functions.sh"

MiB=$((1024 * 1024))
A=$(make_image a.img 4M)
B=$(make_image b.img 4M)
fill_image "$A" 51
fill_image "$B" 52
cp "$A" "$WORK/a.orig"
cp "$B" "$WORK/b.orig"
# [0,1M) -> A@1M; [1M,2M) -> B@0
TABLE="0 2048 linear $A 2048
2048 2048 linear $B 0"

start_daemon
udm_ok create t --table "$TABLE"
D=$(disk_file t)

log "punch 64 KiB inside line 1"
fallocate -p -o $((256 * 1024)) -l $((64 * 1024)) "$D" || fail "fallocate -p on $D failed"
expect_zero "$D" $((256 * 1024)) $((64 * 1024)) "punched range through the disk"
read_at "$D" 0 "$MiB" direct >"$WORK/l1" || fail "direct read failed"
expect_zero "$WORK/l1" $((256 * 1024)) $((64 * 1024)) "punched range (direct)"
expect_same "$WORK/l1" 0 "$WORK/a.orig" "$MiB" $((256 * 1024)) "before the hole"
expect_same "$WORK/l1" $((320 * 1024)) "$WORK/a.orig" $((MiB + 320 * 1024)) $((MiB - 320 * 1024)) "after the hole"
expect_zero "$A" $((MiB + 256 * 1024)) $((64 * 1024)) "punched range in A"

log "punch across the line boundary"
fallocate -p -o $((MiB - 8192)) -l 16384 "$D" || fail "fallocate -p across the boundary failed"
expect_zero "$D" $((MiB - 8192)) 16384 "hole across the boundary"
expect_zero "$A" $((2 * MiB - 8192)) 8192 "hole in A"
expect_zero "$B" 0 8192 "hole in B"
expect_same "$B" 8192 "$WORK/b.orig" 8192 $((4 * MiB - 8192)) "rest of B"
expect_same "$A" 0 "$WORK/a.orig" 0 $((MiB + 256 * 1024)) "A before the first hole"
expect_same "$A" $((2 * MiB)) "$WORK/a.orig" $((2 * MiB)) $((2 * MiB)) "A after its range"
expect_size "$D" $((2 * MiB))

log "fsync on the disk file"
make_pattern "$WORK/p" 4096 53
dd if="$WORK/p" of="$D" bs=4096 count=1 conv=notrunc,fsync status=none || fail "write + fsync failed"
expect_same "$A" "$MiB" "$WORK/p" 0 4096 "fsynced write in A"
stop_daemon
