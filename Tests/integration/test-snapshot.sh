#!/usr/bin/env bash
# Snapshots end to end: ext4 on ORIGIN, snapshot, change ORIGIN, the snapshot keeps the old
# files byte for byte; writes to the snapshot; two snapshots at two points in time; the COW
# file's bytes are the kernel's format; a daemon restart restores persistent snapshots with
# every exception and reports transient ones as lost; remove puts ORIGIN back.
source "$(dirname "$0")/functions.sh"
command -v fsfreeze >/dev/null || fail "fsfreeze (util-linux) is not installed"

O_IMG=$(make_image origin.img 96M)
SECTORS=$((96 * 2048))
start_daemon
udm_ok create origin --table "0 $SECTORS linear $O_IMG 0"
ORIGIN=$(disk_file origin)

log "ext4 on origin with files"
LOOP=$(attach_loop "$ORIGIN")
mkfs.ext4 -q -F "$LOOP" || fail "mkfs.ext4 failed"
FS=$WORK/fs
mkdir -p "$FS" "$WORK/snapfs"
mount "$LOOP" "$FS" || fail "mount origin failed"
for i in 1 2 3 4; do make_pattern "$FS/file$i" $((3 * 1024 * 1024 + i * 777)) "$i"; done
mkdir -p "$FS/dir" && for i in $(seq 1 50); do echo "small $i" >"$FS/dir/s$i"; done
(cd "$FS" && find . -type f -exec sha256sum {} + | sort -k2) >"$WORK/before.sums"

log "snapshot create with the filesystem frozen (as LVM does)"
fsfreeze --freeze "$FS"
udm_ok snapshot create origin snap1 --cow "$IMG/snap1.cow" --chunk-size 16
cmp <(read_at "$(disk_file snap1)" 0 $((SECTORS * 512)) direct) <(read_at "$O_IMG" 0 $((SECTORS * 512))) ||
    fail "a fresh snapshot differs from the origin"
fsfreeze --unfreeze "$FS"
udm snapshot list >"$WORK/list" || fail "snapshot list failed"
grep -Eq '^origin +snap1 +16 ' "$WORK/list" || fail "snapshot list: $(cat "$WORK/list")"
expect_table origin "0 $SECTORS snapshot-origin $MNT/origin-real"
expect_table snap1 "0 $SECTORS snapshot $MNT/origin-real $IMG/snap1.cow P 16"

log "change, add and delete files on the origin"
make_pattern "$FS/file1" $((2 * 1024 * 1024)) 99
rm "$FS/file2"
make_pattern "$FS/new" $((5 * 1024 * 1024)) 42
rm -r "$FS/dir"
sync
umount "$FS"
e2fsck -fn "$LOOP" >"$WORK/fsck.origin" 2>&1 || { cat "$WORK/fsck.origin" >&2; fail "e2fsck on origin"; }

log "the snapshot, through its own loop device, holds the old files byte for byte"
SLOOP=$(attach_loop "$(disk_file snap1)")
e2fsck -fn "$SLOOP" >"$WORK/fsck.snap" 2>&1 || { cat "$WORK/fsck.snap" >&2; fail "e2fsck on snapshot"; }
mount -o ro "$SLOOP" "$WORK/snapfs" || fail "mount snapshot failed"
(cd "$WORK/snapfs" && find . -type f -exec sha256sum {} + | sort -k2) >"$WORK/snap.sums"
umount "$WORK/snapfs"
diff "$WORK/before.sums" "$WORK/snap.sums" >&2 || fail "the snapshot's files differ from the point in time"
detach_loop "$SLOOP"

log "the COW file is the kernel's format: header, then area 0's first records"
COW=$IMG/snap1.cow
[[ $(od -A n -t x1 -N 16 "$COW" | tr -s ' ') == " 53 6e 41 70 01 00 00 00 01 00 00 00 10 00 00 00" ]] ||
    fail "COW header bytes: $(od -A n -t x1 -N 16 "$COW")"
# area 0 is chunk 1 (16 sectors = 8 KiB) with 16-byte records {old chunk, new chunk}, in commit
# order; each record's COW chunk holds the snapshot's data for its origin chunk.
for record in 0 1; do
    old=$(od -A n -t u8 -j $((8192 + record * 16)) -N 8 "$COW" | tr -d ' ')
    new=$(od -A n -t u8 -j $((8192 + record * 16 + 8)) -N 8 "$COW" | tr -d ' ')
    ((new >= 2 && new <= 513)) || fail "record $record points at COW chunk $new, not a data chunk of area 0"
    read_at "$(disk_file snap1)" $((old * 8192)) 8192 direct >"$WORK/chunk.snap"
    expect_same "$COW" $((new * 8192)) "$WORK/chunk.snap" 0 8192 "COW chunk $new is the snapshot's chunk $old"
done

log "a second snapshot sees the later point in time; both keep their own"
mount "$LOOP" "$FS" || fail "remount origin failed"
(cd "$FS" && find . -type f -exec sha256sum {} + | sort -k2) >"$WORK/before2.sums"
fsfreeze --freeze "$FS"
udm_ok snapshot create origin snap2 --cow "$IMG/snap2.cow" --transient
fsfreeze --unfreeze "$FS"
make_pattern "$FS/file3" $((1024 * 1024)) 1234
rm "$FS/new"
sync
umount "$FS"
check_fs() { # check_fs DISK SUMS
    local loop
    loop=$(attach_loop "$(disk_file "$1")")
    mount -o ro,noload "$loop" "$WORK/snapfs" || fail "mount $1 failed"
    (cd "$WORK/snapfs" && find . -type f -exec sha256sum {} + | sort -k2) >"$WORK/$1.now"
    umount "$WORK/snapfs"
    detach_loop "$loop"
    diff "$2" "$WORK/$1.now" >&2 || fail "$1 does not hold its point in time"
}
check_fs snap1 "$WORK/before.sums"
check_fs snap2 "$WORK/before2.sums"

log "writes to a snapshot land in the snapshot only"
read_at "$ORIGIN" 0 $((SECTORS * 512)) direct | sha256sum >"$WORK/origin.sha"
make_pattern "$WORK/sw" $((1024 * 1024 + 4096)) 77
write_at "$WORK/sw" 0 "$(disk_file snap1)" $((40 * 1024 * 1024 + 512)) $((1024 * 1024 + 4096)) direct
read_at "$(disk_file snap1)" $((40 * 1024 * 1024 + 512)) $((1024 * 1024 + 4096)) direct >"$WORK/sw.back"
expect_same "$WORK/sw" 0 "$WORK/sw.back" 0 $((1024 * 1024 + 4096)) "snapshot write read back"
read_at "$ORIGIN" 0 $((SECTORS * 512)) direct | sha256sum | cmp -s - "$WORK/origin.sha" ||
    fail "a write to the snapshot changed the origin"
read_at "$(disk_file snap1)" 0 $((SECTORS * 512)) direct | sha256sum >"$WORK/snap1.sha"
udm status snap1 >"$WORK/snap1.status"

log "a second table over snap1's COW is refused (no exception handover); snap1 stays as it was"
expect_udm_error "$WORK/cow-in-use.err" load snap1 --table "$(udm table snap1)"
grep -q "'snap1' is a snapshot of 'origin'" "$WORK/cow-in-use.err" || fail "unexpected error: $(cat "$WORK/cow-in-use.err")"
expect_udm_error "$WORK/cow-in-use.err" load snap1 --force --table "$(udm table snap1)"
grep -q "is in use by a live snapshot" "$WORK/cow-in-use.err" || fail "unexpected error: $(cat "$WORK/cow-in-use.err")"
udm info snap1 | grep -q INACTIVE && fail "the refused table was kept as snap1's inactive table"
read_at "$(disk_file snap1)" 0 $((SECTORS * 512)) direct | sha256sum | cmp -s - "$WORK/snap1.sha" ||
    fail "snap1 changed after a refused load"

log "restart: the persistent snapshot is back with every exception; the transient one is reported lost"
detach_loop "$LOOP"
stop_daemon
start_daemon
read_at "$(disk_file snap1)" 0 $((SECTORS * 512)) direct | sha256sum | cmp -s - "$WORK/snap1.sha" ||
    fail "snap1 changed across a restart"
[[ $(udm status snap1) == "$(cat "$WORK/snap1.status")" ]] || fail "snap1 status changed: $(udm status snap1)"
disk_listed snap2 && fail "the transient snapshot was restored"
udm snapshot list >"$WORK/list2"
grep -E 'snap2 .*lost' "$WORK/list2" >/dev/null || fail "snapshot list does not report snap2 as lost: $(cat "$WORK/list2")"
grep -q "snap2: a transient" "$DAEMON_LOG" || fail "the daemon log does not say why snap2 is gone"

log "removing the last snapshot puts the origin back on its own table"
udm_ok snapshot remove snap1
expect_table origin "0 $SECTORS linear $O_IMG 0"
disk_listed origin-real && fail "origin-real still there"
[[ -f $IMG/snap1.cow ]] || fail "the COW file was deleted"
read_at "$ORIGIN" 0 $((SECTORS * 512)) direct | sha256sum | cmp -s - "$WORK/origin.sha" ||
    fail "the origin changed when its snapshot was removed"

log "--preallocate writes the new COW file's blocks; refused for an existing file"
expect_udm_error "$WORK/prealloc.err" snapshot create origin snap3 --cow "$IMG/snap1.cow" --preallocate
grep -q "already exists; --preallocate is for a new file" "$WORK/prealloc.err" ||
    fail "unexpected error: $(cat "$WORK/prealloc.err")"
disk_listed snap3 && fail "a refused snapshot create left snap3"
expect_table origin "0 $SECTORS linear $O_IMG 0"
udm_ok snapshot create origin snap3 --cow "$IMG/snap3.cow" --preallocate --chunk-size 16
size=$(stat -c %s "$IMG/snap3.cow")
allocated=$(($(stat -c %b "$IMG/snap3.cow") * $(stat -c %B "$IMG/snap3.cow")))
((allocated >= size)) || fail "preallocated COW file has $allocated of $size bytes allocated"
make_pattern "$WORK/p3" $((64 * 1024)) 33
read_at "$ORIGIN" $((8 * 1024 * 1024)) $((64 * 1024)) direct >"$WORK/p3.before"
write_at "$WORK/p3" 0 "$ORIGIN" $((8 * 1024 * 1024)) $((64 * 1024)) direct
read_at "$(disk_file snap3)" $((8 * 1024 * 1024)) $((64 * 1024)) direct >"$WORK/p3.snap"
expect_same "$WORK/p3.before" 0 "$WORK/p3.snap" 0 $((64 * 1024)) "snap3 keeps the chunk the origin overwrote"
udm_ok snapshot remove snap3
stop_daemon
