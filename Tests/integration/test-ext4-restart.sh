#!/usr/bin/env bash
# ext4 on a loop device over a two-line udm disk survives a clean daemon restart (definitions
# restored from the state dir), and data written through the exposed file survives kill -9
# (the new daemon clears the stale FUSE mount itself). Uses mount/udm-mount and udm-umount.
source "$(dirname "$0")/functions.sh"

MiB=$((1024 * 1024))
A=$(make_image a.img 64M)
B=$(make_image b.img 64M)
TABLE="0 100000 linear $A 2048
100000 100000 linear $B 4096"
SIZE=$((200000 * 512))
FS_SIZE=80M                     # leaves the disk's tail free for the raw kill -9 write
RAW_OFF=$((90 * MiB))           # disk offset of that write: line 2 -> B
RAW_IMG_OFF=$((4096 * 512 + RAW_OFF - 100000 * 512))
FSDIR=$WORK/fs
mkdir -p "$FSDIR"

start_daemon
udm_ok create fs --table "$TABLE"
D=$(disk_file fs)
expect_size "$D" "$SIZE"

log "mkfs.ext4 on a loop over $D, write files"
LOOP=$(attach_loop "$D")
mkfs.ext4 -q -F "$LOOP" "$FS_SIZE" || fail "mkfs.ext4 $LOOP failed"
mount "$LOOP" "$FSDIR" || fail "mount $LOOP failed"
head -c $((5 * MiB)) /dev/urandom >"$FSDIR/big1"
head -c $((3 * MiB + 123)) /dev/urandom >"$FSDIR/big2"
mkdir -p "$FSDIR/small/deeper"
for i in $(seq 1 60); do
    head -c $((i * 997)) /dev/urandom >"$FSDIR/small/f$i"
done
head -c 4096 /dev/urandom >"$FSDIR/small/deeper/x"
(cd "$FSDIR" && find . -type f -print0 | sort -z | xargs -0 sha256sum) >"$WORK/sums"
[[ $(wc -l <"$WORK/sums") == 63 ]] || fail "expected 63 files in the checksum list"
umount "$FSDIR" || fail "umount $FSDIR failed"
e2fsck -fn "$LOOP" >"$WORK/fsck1" 2>&1 || { cat "$WORK/fsck1" >&2; fail "e2fsck -fn after umount not clean"; }
detach_loop "$LOOP"

log "clean restart: udm shutdown, start again with the same state dir"
stop_daemon
[[ -n $(ls -A "$STATE") ]] || fail "state dir $STATE is empty after shutdown"
start_daemon
disk_listed fs || fail "disk fs not restored after restart: $(udm ls 2>&1)"
expect_table fs "$TABLE"
expect_size "$D" "$SIZE"

log "udm-mount read-only, checksums"
out=$("$REPO_ROOT/mount/udm-mount" fs "$FSDIR" -o ro --socket "$SOCK" 2>"$WORK/mount.err") ||
    fail "udm-mount failed: $(cat "$WORK/mount.err")"
LOOP=$(tail -n 1 <<<"$out")
echo "$LOOP" >>"$LOOP_LIST"
[[ $LOOP == /dev/loop* ]] || fail "udm-mount printed [$out], expected a loop device"
[[ $(findmnt -n -o SOURCE --mountpoint "$FSDIR") == "$LOOP" ]] || fail "$FSDIR is not mounted from $LOOP"
grep -qw ro <<<"$(findmnt -n -o OPTIONS --mountpoint "$FSDIR")" || fail "$FSDIR is not mounted read-only"
(cd "$FSDIR" && sha256sum --quiet -c "$WORK/sums") || fail "checksums differ after restart"
"$REPO_ROOT/mount/udm-umount" "$FSDIR" 2>"$WORK/umount.err" || fail "udm-umount failed: $(cat "$WORK/umount.err")"
is_mounted "$FSDIR" && fail "$FSDIR still mounted after udm-umount"
losetup "$LOOP" >/dev/null 2>&1 && fail "$LOOP still attached after udm-umount"

log "kill -9: write + fsync through $D, kill the daemon, start again"
make_pattern "$WORK/p" "$MiB" 7
write_at "$WORK/p" 0 "$D" "$RAW_OFF" "$MiB" || fail "write through $D failed"
write_at "$WORK/p" 0 "$D" $((RAW_OFF + MiB + 1000)) 5000 || fail "unaligned write through $D failed"
sync
kill9_daemon
is_mounted "$MNT" || echo "note: no stale mount left at $MNT after kill -9" >&2
start_daemon
[[ $(mount_count "$MNT") == 1 ]] || fail "$(mount_count "$MNT") mounts at $MNT after restart (stale one not cleared)"
disk_listed fs || fail "disk fs not restored after kill -9"
expect_table fs "$TABLE"
expect_same "$D" "$RAW_OFF" "$WORK/p" 0 "$MiB" "data through $D after kill -9"
expect_same "$D" $((RAW_OFF + MiB + 1000)) "$WORK/p" 0 5000 "unaligned data through $D after kill -9"
expect_same "$B" "$RAW_IMG_OFF" "$WORK/p" 0 "$MiB" "data in image B after kill -9"
expect_zero "$D" $((RAW_OFF + MiB)) 1000 "gap between the two writes"

log "the filesystem is intact too"
LOOP=$(attach_loop "$D")
e2fsck -fn "$LOOP" >"$WORK/fsck2" 2>&1 || { cat "$WORK/fsck2" >&2; fail "e2fsck -fn after kill -9 not clean"; }
mount -o ro "$LOOP" "$FSDIR" || fail "mount after kill -9 failed"
(cd "$FSDIR" && sha256sum --quiet -c "$WORK/sums") || fail "checksums differ after kill -9"
umount "$FSDIR"

log "kill -9 while ext4 is mounted on a loop over $D (a busy stale mount)"
mount "$LOOP" "$FSDIR" || fail "mount rw failed"
head -c $((2 * MiB)) /dev/urandom >"$FSDIR/late"
late_sum=$(sha "$FSDIR/late")
sync
kill9_daemon
start_daemon
[[ $(mount_count "$MNT") == 1 ]] || fail "$(mount_count "$MNT") mounts at $MNT after restart (busy stale one not cleared)"
umount "$FSDIR" 2>/dev/null || umount -l "$FSDIR"   # the old fs lost its disk: errors are expected
detach_loop "$LOOP"
LOOP=$(attach_loop "$D")
mount "$LOOP" "$FSDIR" || fail "mount after kill -9 with the fs mounted failed"
[[ $(sha "$FSDIR/late") == "$late_sum" ]] || fail "file written + synced before kill -9 differs"
(cd "$FSDIR" && sha256sum --quiet -c "$WORK/sums") || fail "checksums differ after the second kill -9"
umount "$FSDIR"
e2fsck -fn "$LOOP" >"$WORK/fsck3" 2>&1 || { cat "$WORK/fsck3" >&2; fail "e2fsck -fn after the second kill -9 not clean"; }
detach_loop "$LOOP"
stop_daemon
