#!/usr/bin/env bash
# A linear disk over an NBD export (nbdkit's file plugin over an image, on a Unix socket):
# `udm table` prints the URI back as given; bytes written through the disk land in the image
# at the table's offset; ext4 + fio --verify on a loop over it, e2fsck clean; the whole disk
# equals the image's range; a restarted daemon reconnects on restore and reads the same.
source "$(dirname "$0")/functions.sh"
command -v fio >/dev/null || fail "fio is not installed"

MiB=$((1024 * 1024))
BACKING=$(make_image backing.img 72M)
fill_image "$BACKING" 11
SOCKET=$TESTDIR/file.sock
URI="nbd+unix:///?socket=$SOCKET"
OFFSET=2048                              # sectors into the export
SECTORS=$((64 * 2048))                   # a 64 MiB disk
TABLE="0 $SECTORS linear $URI $OFFSET"
FSDIR=$WORK/fs
mkdir -p "$FSDIR"

start_nbdkit file "$SOCKET" file "$BACKING"
start_daemon
udm_ok create n --table "$TABLE"
D=$(disk_file n)
expect_size "$D" $((SECTORS * 512))
expect_table n "$TABLE"

log "bytes land in the image at the table's offset, and read back"
read_at "$D" 0 $MiB direct >"$WORK/start"
expect_same "$WORK/start" 0 "$BACKING" $((OFFSET * 512)) $MiB "disk start before any write"
make_pattern "$WORK/p" $((3 * MiB)) 5
write_at "$WORK/p" 0 "$D" $((7 * MiB + 4096)) $((3 * MiB)) direct
expect_same "$BACKING" $((OFFSET * 512 + 7 * MiB + 4096)) "$WORK/p" 0 $((3 * MiB)) "pattern in the image"
read_at "$D" $((7 * MiB + 4096)) $((3 * MiB)) direct >"$WORK/back"
expect_same "$WORK/back" 0 "$WORK/p" 0 $((3 * MiB)) "pattern read back"

log "ext4 + fio --verify on a loop over $D"
LOOP=$(attach_loop "$D")
mkfs.ext4 -q -F -E nodiscard "$LOOP" || fail "mkfs.ext4 $LOOP failed"
mount "$LOOP" "$FSDIR" || fail "mount $LOOP failed"
(cd "$WORK" && fio --name=nbd --directory="$FSDIR" --ioengine=libaio --iodepth=16 --direct=1 \
    --rw=randwrite --bsrange=4k-256k --numjobs=2 --size=12M --verify=crc32c --do_verify=1 \
    --verify_fatal=1 --randrepeat=0 --group_reporting --verify_state_save=0 \
    --output="$WORK/fio.out" >/dev/null 2>&1) || { tail -n 30 "$WORK/fio.out" >&2; fail "fio failed"; }
grep -q 'err= *0' "$WORK/fio.out" || { cat "$WORK/fio.out" >&2; fail "fio reported errors"; }
head -c $((5 * MiB)) /dev/urandom >"$FSDIR/file"
SUM=$(sha "$FSDIR/file")
umount "$FSDIR" || fail "umount $FSDIR failed"
e2fsck -fn "$LOOP" >"$WORK/fsck" 2>&1 || { cat "$WORK/fsck" >&2; fail "e2fsck -fn not clean"; }
detach_loop "$LOOP"

log "the whole disk equals the image's range"
read_at "$D" 0 $((SECTORS * 512)) direct >"$WORK/disk" || fail "read of $D failed"
expect_same "$WORK/disk" 0 "$BACKING" $((OFFSET * 512)) $((SECTORS * 512)) "disk vs image"

log "a restarted daemon reconnects on restore"
stop_daemon
start_daemon
expect_table n "$TABLE"
LOOP=$(attach_loop "$D")
mount -o ro "$LOOP" "$FSDIR" || fail "mount $LOOP after restart failed"
[[ $(sha "$FSDIR/file") == "$SUM" ]] || fail "file checksum differs after restart"
umount "$FSDIR"
detach_loop "$LOOP"
udm_ok remove n
expect_no_nbd_clients file
stop_daemon
