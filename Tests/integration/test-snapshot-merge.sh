#!/usr/bin/env bash
# Merge: ext4 on ORIGIN, snapshot s1, change files on ORIGIN, take s2, restart the daemon,
# merge s1: ORIGIN equals s1's content byte for byte, e2fsck is clean, s2 is unchanged, and
# ORIGIN stays snapshot-origin for s2. Removing s2 puts ORIGIN back on its own table.
source "$(dirname "$0")/functions.sh"

O_IMG=$(make_image origin.img 64M)
SECTORS=$((64 * 2048))
start_daemon
udm_ok create origin --table "0 $SECTORS linear $O_IMG 0"
ORIGIN=$(disk_file origin)
FS=$WORK/fs
mkdir -p "$FS"

LOOP=$(attach_loop "$ORIGIN")
mkfs.ext4 -q -F "$LOOP" || fail "mkfs.ext4 failed"
mount "$LOOP" "$FS" || fail "mount failed"
for i in 1 2 3; do make_pattern "$FS/f$i" $((4 * 1024 * 1024 + i)) "$i"; done
fsfreeze --freeze "$FS"
udm_ok snapshot create origin s1 --cow "$IMG/s1.cow" --chunk-size 8
fsfreeze --unfreeze "$FS"
read_at "$(disk_file s1)" 0 $((SECTORS * 512)) direct >"$WORK/s1.content"

log "change the origin: overwrite, delete, add"
make_pattern "$FS/f1" $((6 * 1024 * 1024)) 10
rm "$FS/f2"
make_pattern "$FS/new" $((8 * 1024 * 1024)) 11
umount "$FS"
detach_loop "$LOOP"
udm_ok snapshot create origin s2 --cow "$IMG/s2.cow" --chunk-size 16
S2_SHA=$(read_at "$(disk_file s2)" 0 $((SECTORS * 512)) direct | sha256sum)

log "restart, then merge s1 (the COW written before the restart merges the same)"
stop_daemon
start_daemon
udm snapshot merge s1 >"$WORK/merge.out" 2>&1 || { cat "$WORK/merge.out" >&2; fail "snapshot merge failed"; }
grep -q "merge done" "$WORK/merge.out" || fail "merge output: $(cat "$WORK/merge.out")"
disk_listed s1 && fail "s1 still exists after its merge"
expect_table origin "0 $SECTORS snapshot-origin $MNT/origin-real"
read_at "$ORIGIN" 0 $((SECTORS * 512)) direct >"$WORK/origin.content"
cmp -s "$WORK/origin.content" "$WORK/s1.content" || fail "the merged origin differs from s1"
LOOP=$(attach_loop "$ORIGIN")
e2fsck -fn "$LOOP" >"$WORK/fsck" 2>&1 || { cat "$WORK/fsck" >&2; fail "e2fsck -fn after merge"; }
detach_loop "$LOOP"
[[ $(read_at "$(disk_file s2)" 0 $((SECTORS * 512)) direct | sha256sum) == "$S2_SHA" ]] ||
    fail "the other snapshot changed during the merge"
[[ -f $IMG/s1.cow ]] || fail "the merged snapshot's COW file was deleted"

log "a second merge while one is running is refused"
udm_ok snapshot create origin s3 --cow "$IMG/s3.cow"
udm_ok snapshot remove s3

log "removing s2 puts the origin back on its own table"
udm_ok snapshot remove s2
expect_table origin "0 $SECTORS linear $O_IMG 0"
cmp -s <(read_at "$ORIGIN" 0 $((SECTORS * 512)) direct) "$WORK/s1.content" || fail "origin changed on snapshot remove"
stop_daemon
