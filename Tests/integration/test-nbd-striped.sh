#!/usr/bin/env bash
# A disk striped over three NBD servers (nbdkit's file plugin, two on TCP ports of 127.0.0.1,
# one on a Unix socket): every 64 KiB chunk lands on the server and offset the stripe mapping
# says; fio --verify through a loop device; afterwards each image holds its share of the disk.
source "$(dirname "$0")/functions.sh"
command -v fio >/dev/null || fail "fio is not installed"

KiB=1024
MiB=$((1024 * 1024))
CHUNK=128                                # sectors: 64 KiB
PER=$((16 * 2048))                       # sectors on each server
SECTORS=$((3 * PER))
IMAGES=() URIS=()
for i in 0 1 2; do
    IMAGES+=("$(make_image "s$i.img" 16M)")
done
PORT0=$(free_port)
start_nbdkit s0 "$PORT0" file "${IMAGES[0]}"
PORT1=$(free_port)
start_nbdkit s1 "$PORT1" file "${IMAGES[1]}"
start_nbdkit s2 "$TESTDIR/s2.sock" file "${IMAGES[2]}"
URIS=("nbd://127.0.0.1:$PORT0/" "nbd://127.0.0.1:$PORT1" "nbd+unix:///?socket=$TESTDIR/s2.sock")
TABLE="0 $SECTORS striped 3 $CHUNK ${URIS[0]} 0 ${URIS[1]} 0 ${URIS[2]} 0"

start_daemon
udm_ok create st --table "$TABLE"
D=$(disk_file st)
expect_size "$D" $((SECTORS * 512))
expect_table st "$TABLE"

# expect_striped DISKFILE: chunk k of the disk is chunk k/3 of image k%3, for every chunk.
expect_striped() {
    local k chunks=$((SECTORS / CHUNK)) bytes=$((CHUNK * 512))
    read_at "$1" 0 $((SECTORS * 512)) direct >"$WORK/disk" || fail "read of $1 failed"
    for ((k = 0; k < chunks; k++)); do
        expect_same "$WORK/disk" $((k * bytes)) "${IMAGES[k % 3]}" $((k / 3 * bytes)) "$bytes" "chunk $k"
    done
}

log "a pattern over the whole disk lands chunk by chunk on the three servers"
make_pattern "$WORK/p" $((SECTORS * 512)) 4
write_at "$WORK/p" 0 "$D" 0 $((SECTORS * 512)) direct
expect_same "${IMAGES[1]}" 0 "$WORK/p" $((64 * KiB)) $((64 * KiB)) "chunk 1 on server 1"
expect_same "${IMAGES[2]}" $((64 * KiB)) "$WORK/p" $((5 * 64 * KiB)) $((64 * KiB)) "chunk 5 on server 2"
expect_striped "$D"

log "fio --verify through a loop device"
LOOP=$(attach_loop "$D")
(cd "$WORK" && fio --name=striped --filename="$LOOP" --ioengine=libaio --iodepth=16 --direct=1 \
    --rw=randwrite --bsrange=4k-512k --numjobs=3 --size=12M --offset_increment=16M \
    --verify=crc32c --do_verify=1 --verify_fatal=1 --randrepeat=0 --group_reporting \
    --verify_state_save=0 --output="$WORK/fio.out" >/dev/null 2>&1) || { tail -n 30 "$WORK/fio.out" >&2; fail "fio failed"; }
grep -q 'err= *0' "$WORK/fio.out" || { cat "$WORK/fio.out" >&2; fail "fio reported errors"; }
detach_loop "$LOOP"
expect_striped "$D"
udm_ok remove st
stop_daemon
