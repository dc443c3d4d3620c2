#!/usr/bin/env bash
# striped: a 4-stripe disk over 4 images, chunk 64 KiB (128 sectors), non-zero offsets.
# A pattern written through the exposed file lands in each image where the mapping says;
# a discard spanning partial and whole chunks zeroes exactly each stripe's share; fsync and
# the status line work; then ext4 + a verifying fio job + e2fsck on a loop over it.
source "$(dirname "$0")/functions.sh"
command -v fio >/dev/null || fail "fio is not installed"

CHUNK=128                      # sectors
STRIPES=4
PER_STRIPE=$((16384))          # sectors per stripe (8 MiB)
SIZE=$((STRIPES * PER_STRIPE)) # sectors
OFFSETS=(2048 4096 6144 8192)
IMGS=()
for i in 0 1 2 3; do IMGS+=("$(make_image s$i.img 16M)"); done
TABLE="0 $SIZE striped $STRIPES $CHUNK ${IMGS[0]} ${OFFSETS[0]} ${IMGS[1]} ${OFFSETS[1]} ${IMGS[2]} ${OFFSETS[2]} ${IMGS[3]} ${OFFSETS[3]}"

start_daemon
udm_ok create st --table "$TABLE"
D=$(disk_file st)
expect_size "$D" $((SIZE * 512))
expect_table st "$TABLE"
[[ $(udm status st) == "0 $SIZE striped 4 ${IMGS[0]} ${IMGS[1]} ${IMGS[2]} ${IMGS[3]} 1 AAAA" ]] ||
    fail "status line: $(udm status st)"

# check_mapping DISKFILE: every chunk of the disk equals the image bytes the mapping names.
check_mapping() {
    local disk=$1 c stripe row
    for ((c = 0; c < SIZE / CHUNK; c++)); do
        stripe=$((c % STRIPES)) row=$((c / STRIPES))
        expect_same "$disk" $((c * CHUNK * 512)) "${IMGS[$stripe]}" $(((OFFSETS[stripe] + row * CHUNK) * 512)) \
            $((CHUNK * 512)) "chunk $c (stripe $stripe row $row)"
    done
}

log "write a pattern over the whole disk (unaligned 1 MiB writes), check every chunk in the images"
make_pattern "$WORK/pattern" $((SIZE * 512)) 7
dd if="$WORK/pattern" of="$D" bs=1000000 conv=notrunc,fsync status=none || fail "write through $D failed"
check_mapping "$WORK/pattern"
for i in 0 1 2 3; do
    expect_zero "${IMGS[$i]}" 0 $((OFFSETS[i] * 512)) "image $i before its offset"
done

log "discard 100 KiB..1 MiB+3 KiB: partial chunks at both ends, whole chunks between"
START=$((100 * 1024)) LEN=$((1024 * 1024 + 3 * 1024 - START))
fallocate -p -o $START -l $LEN "$D" || fail "fallocate punch on $D failed"
cp "$WORK/pattern" "$WORK/expected"
dd if=/dev/zero of="$WORK/expected" bs=1 seek=$START count=$LEN conv=notrunc status=none
check_mapping "$WORK/expected"
read_at "$D" 0 $((SIZE * 512)) direct >"$WORK/readback"
expect_same "$WORK/readback" 0 "$WORK/expected" 0 $((SIZE * 512)) "disk after discard"

log "fsync reaches every stripe"
python3 -c "import os; fd = os.open('$D', os.O_RDWR); os.fsync(fd); os.close(fd)" || fail "fsync on $D failed"

log "ext4 + fio --verify on a loop over the striped disk"
LOOP=$(attach_loop "$D")
mkfs.ext4 -q -F "$LOOP" || fail "mkfs.ext4 failed"
FSDIR=$WORK/fs
mkdir -p "$FSDIR"
mount "$LOOP" "$FSDIR" || fail "mount failed"
fio --name=verify --directory="$FSDIR" --ioengine=libaio --direct=1 --rw=randwrite --bs=4k --size=12M \
    --iodepth=16 --numjobs=2 --verify=crc32c --verify_fatal=1 --verify_state_save=0 --group_reporting \
    --output="$WORK/fio.out" >/dev/null 2>&1 || { tail -n 20 "$WORK/fio.out" >&2; fail "fio --verify failed"; }
grep -q 'err= *0' "$WORK/fio.out" || fail "fio reported errors"
umount "$FSDIR" || fail "umount failed"
e2fsck -fn "$LOOP" >"$WORK/fsck" 2>&1 || { cat "$WORK/fsck" >&2; fail "e2fsck -fn not clean"; }
detach_loop "$LOOP"
udm_ok remove st
stop_daemon
