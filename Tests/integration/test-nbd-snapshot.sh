#!/usr/bin/env bash
# A snapshot whose origin is a local image and whose COW is an NBD export (qemu-nbd over an
# empty image): the snapshot keeps the origin's old data while the origin changes (the old
# chunks went to the export), takes writes of its own, survives a daemon restart (the COW
# reconnects on restore), and merges back: the origin image then equals the snapshot's content.
source "$(dirname "$0")/functions.sh"

MiB=$((1024 * 1024))
SECTORS=$((32 * 2048))
O_IMG=$(make_image origin.img 32M)
fill_image "$O_IMG" 1
cp "$O_IMG" "$WORK/original"
COW_IMG=$(make_image cow.img 40M)
SOCKET=$TESTDIR/cow.sock
COW="nbd+unix:///?socket=$SOCKET"

start_qemu_nbd cow "$SOCKET" "$COW_IMG"
start_daemon
udm_ok create origin --table "0 $SECTORS linear $O_IMG 0"
udm_ok snapshot create origin s1 --cow "$COW" --chunk-size 8
ORIGIN=$(disk_file origin)
S1=$(disk_file s1)
udm table s1 | grep -qF " $COW P 8" || fail "s1's table does not name the COW URI: $(udm table s1)"

log "the origin changes; the snapshot keeps the old data, which went to the NBD export"
make_pattern "$WORK/p2" $((4 * MiB)) 2
write_at "$WORK/p2" 0 "$ORIGIN" $((3 * MiB)) $((4 * MiB)) direct
expect_same "$O_IMG" $((3 * MiB)) "$WORK/p2" 0 $((4 * MiB)) "new data in the origin image"
read_at "$S1" 0 $((SECTORS * 512)) direct >"$WORK/s1.now"
cmp -s "$WORK/s1.now" "$WORK/original" || fail "the snapshot does not read the origin's old data"
cmp -s -n $((8 * MiB)) "$COW_IMG" /dev/zero && fail "nothing reached the COW export"

log "the snapshot takes writes of its own"
make_pattern "$WORK/p3" $((2 * MiB)) 3
write_at "$WORK/p3" 0 "$S1" $((10 * MiB)) $((2 * MiB)) direct
read_at "$S1" 0 $((SECTORS * 512)) direct >"$WORK/expected"
expect_same "$WORK/expected" $((10 * MiB)) "$WORK/p3" 0 $((2 * MiB)) "snapshot write"
expect_same "$O_IMG" $((10 * MiB)) "$WORK/original" $((10 * MiB)) $((2 * MiB)) "origin image under the snapshot's write"

log "a restarted daemon reconnects the COW on restore"
stop_daemon
start_daemon
read_at "$S1" 0 $((SECTORS * 512)) direct | cmp -s - "$WORK/expected" || fail "the snapshot reads differently after a restart"

log "merge back: the origin image equals the snapshot"
udm snapshot merge s1 >"$WORK/merge.out" 2>&1 || { cat "$WORK/merge.out" >&2; fail "snapshot merge failed"; }
grep -q "merge done" "$WORK/merge.out" || fail "merge output: $(cat "$WORK/merge.out")"
disk_listed s1 && fail "s1 still exists after its merge"
read_at "$ORIGIN" 0 $((SECTORS * 512)) direct | cmp -s - "$WORK/expected" || fail "the merged origin differs from the snapshot"
[[ $(sha "$O_IMG") == $(sha "$WORK/expected") ]] || fail "the origin image's checksum is not the snapshot's"
udm_ok remove origin
stop_daemon
