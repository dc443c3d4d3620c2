#!/usr/bin/env bash
# Concurrent random I/O with verification, through MOUNT/NAME and through a loop device over
# it, on a table whose lines split many of the requests. Then the images match the disk.
source "$(dirname "$0")/functions.sh"
command -v fio >/dev/null || fail "fio is not installed"

MiB=$((1024 * 1024))
A=$(make_image a.img 16M)
B=$(make_image b.img 16M)
# 16 MiB disk in four lines alternating between the images, odd offsets
TABLE="0 8192 linear $A 8
8192 8192 linear $B 24
16384 8192 linear $A 16392
24576 8192 linear $B 16408"
SIZE=$((32768 * 512))

start_daemon
udm_ok create f --table "$TABLE"
D=$(disk_file f)
expect_size "$D" "$SIZE"

# run_fio NAME FILE ENGINE DEPTH: 4 jobs, each verifying its own 4 MiB region
run_fio() {
    (cd "$WORK" && fio --name="$1" --filename="$2" --ioengine="$3" --iodepth="$4" --direct=1 \
        --rw=randwrite --bsrange=512-128k --blockalign=512 --numjobs=4 --size=4M --offset_increment=4M \
        --verify=crc32c --do_verify=1 --verify_fatal=1 --randrepeat=0 --loops=3 --group_reporting \
        --verify_state_save=0 --output="$WORK/$1.out" >/dev/null 2>&1) || { tail -n 30 "$WORK/$1.out" >&2; fail "fio $1 failed"; }
    grep -q 'err= *0' "$WORK/$1.out" || { cat "$WORK/$1.out" >&2; fail "fio $1 reported errors"; }
}

log "fio psync x4 on $D"
run_fio file "$D" psync 1

log "fio libaio depth 16 x4 on a loop device over $D"
LOOP=$(attach_loop "$D")
run_fio loop "$LOOP" libaio 16
detach_loop "$LOOP"

log "the images hold what the disk shows"
read_at "$D" 0 "$SIZE" direct >"$WORK/disk" || fail "direct read of $D failed"
expect_same "$WORK/disk" 0 "$A" $((8 * 512)) $((8192 * 512)) "line 1"
expect_same "$WORK/disk" $((8192 * 512)) "$B" $((24 * 512)) $((8192 * 512)) "line 2"
expect_same "$WORK/disk" $((16384 * 512)) "$A" $((16392 * 512)) $((8192 * 512)) "line 3"
expect_same "$WORK/disk" $((24576 * 512)) "$B" $((16408 * 512)) $((8192 * 512)) "line 4"
udm_ok remove f
stop_daemon
