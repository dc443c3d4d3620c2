#!/usr/bin/env bash
# zero target: reads return zeros whatever the images hold, writes succeed and are dropped.
source "$(dirname "$0")/functions.sh"

MiB=$((1024 * 1024))
A=$(make_image a.img 4M)
fill_image "$A" 41
sha_a=$(sha "$A")
# [0,1M) -> A@0; [1M,2M) zero; [2M,3M) -> A@2M
TABLE="0 2048 linear $A 0
2048 2048 zero
4096 2048 linear $A 4096"

start_daemon
udm_ok create z --table "$TABLE"
D=$(disk_file z)
expect_size "$D" $((3 * MiB))

log "reads: zeros in the zero range, A's bytes around it"
read_at "$D" 0 $((3 * MiB)) direct >"$WORK/all" || fail "direct read of $D failed"
expect_same "$WORK/all" 0 "$A" 0 "$MiB" "first linear range"
expect_zero "$WORK/all" "$MiB" "$MiB" "zero range (direct)"
expect_same "$WORK/all" $((2 * MiB)) "$A" $((2 * MiB)) "$MiB" "second linear range"
expect_zero "$D" $((MiB + 1234)) 5000 "zero range (buffered, unaligned)"

log "writes to the zero range succeed and are dropped"
make_pattern "$WORK/p" "$MiB" 42
write_at "$WORK/p" 0 "$D" "$MiB" "$MiB" direct || fail "direct write to the zero range failed"
write_at "$WORK/p" 0 "$D" $((MiB + 777)) 3000 || fail "buffered write to the zero range failed"
expect_zero "$D" "$MiB" "$MiB" "zero range after writes"
read_at "$D" "$MiB" "$MiB" direct >"$WORK/z" || fail "direct read of the zero range failed"
expect_zero "$WORK/z" 0 "$MiB" "zero range after writes (direct)"
[[ $(sha "$A") == "$sha_a" ]] || fail "image A changed by writes to the zero range"
stop_daemon
