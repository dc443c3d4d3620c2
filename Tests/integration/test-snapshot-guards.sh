#!/usr/bin/env bash
# The snapshot guard rails, each refusal one line with nothing changed (the disk list, the
# tables and the origin image's bytes are compared after each): a COW that is a file or disk
# already in use, however its path is spelled; a COW holding an old snapshot store unless
# --reuse-cow; a merge while the origin or the snapshot is open; remove / load / snapshot
# create that would break a snapshot group, unless --force; names that are not snapshots.
source "$(dirname "$0")/functions.sh"

MiB=$((1024 * 1024))
SECTORS=$((16 * 2048))
O=$(make_image origin.img 16M)
B=$(make_image other.img 4M)
fill_image "$O" 1
# Zeros where a COW header would go: a store initialised over the origin would not be refused
# for a bad magic, it would silently overwrite these bytes.
dd if=/dev/zero of="$O" bs=64K count=1 conv=notrunc status=none
cp "$O" "$WORK/origin.orig"
start_daemon
udm_ok create origin --table "0 $SECTORS linear $O 0"
udm_ok create other --table "0 8192 linear $B 0"
ORIGIN=$(disk_file origin)

# snapshot_state: what must not change across a refusal.
snapshot_state() {
    { udm ls; udm table; udm info | grep -E '^(Name|Tables)'; udm snapshot list; sha "$O"; } 2>&1
}
# refused PATTERN CMD...: CMD fails with one line on stderr matching PATTERN, state unchanged.
refused() {
    local pattern=$1
    shift
    snapshot_state >"$WORK/state.before"
    expect_udm_error "$WORK/err" "$@"
    grep -Eq "$pattern" "$WORK/err" || fail "udm $*: message [$(cat "$WORK/err")] does not match [$pattern]"
    snapshot_state >"$WORK/state.after"
    diff "$WORK/state.before" "$WORK/state.after" >&2 || fail "udm $* was refused but changed the state"
}

log "names that are not snapshots"
refused "no disk named 'nosuch'" snapshot remove nosuch
refused "no disk named 'nosuch'" snapshot merge nosuch
refused "'other' is not a snapshot" snapshot remove other
refused "no disk named 'nosuch'" snapshot create nosuch s --cow "$IMG/never.cow"
[[ ! -e $IMG/never.cow ]] || fail "a refused snapshot create left its COW file"

log "a COW that is a file in use or a udm disk, however spelled"
ln -s "$O" "$WORK/link.cow"
refused "COW $O is in use by disk 'origin'" snapshot create origin s --cow "$O"
refused "is in use by disk 'origin'" snapshot create origin s --cow "$WORK/link.cow"
refused "is in use by disk 'origin'" snapshot create origin s --cow "$IMG/../img/origin.img"
refused "is in use by disk 'other'" snapshot create origin s --cow "$B"
refused "is a udm disk" snapshot create origin s --cow "$MNT/origin"
refused "is a udm disk" snapshot create origin s --cow "$MNT/other"
refused "is a udm disk" snapshot create origin s --cow "$MNT/../$(basename "$MNT")/other"
LOOP=$(attach_loop "$O")
refused "COW $LOOP is in use by disk 'origin'" snapshot create origin s --cow "$LOOP"
detach_loop "$LOOP"
LOOP=$(attach_loop "$MNT/other")
refused "COW $LOOP is a udm disk" snapshot create origin s --cow "$LOOP"
detach_loop "$LOOP"
cmp "$O" "$WORK/origin.orig" || fail "the origin image changed"

log "a first snapshot; a plain create or a second snapshot may not name its COW"
udm_ok snapshot create origin s1 --cow "$IMG/s1.cow" --chunk-size 8
refused "is in use by disk 's1'" create x --table "0 $SECTORS snapshot $MNT/origin-real $IMG/s1.cow P 8"
refused "is in use by disk 'origin-real'" create x --table "0 $SECTORS snapshot $MNT/origin-real $O P 8"
refused "is a udm disk" create x --table "0 $SECTORS snapshot $MNT/origin-real $MNT/other P 8"
refused "is in use by disk 's1'" snapshot create origin s --cow "$IMG/s1.cow"
refused "is in use by disk 's1'" load other --table "0 $SECTORS snapshot $MNT/origin-real $IMG/s1.cow P 8"

log "a COW left by an earlier snapshot is refused unless --reuse-cow"
make_pattern "$WORK/p2" "$MiB" 2
write_at "$WORK/p2" 0 "$ORIGIN" $((3 * MiB)) "$MiB" direct || fail "write to origin failed"
expect_same "$(disk_file s1)" $((3 * MiB)) "$WORK/origin.orig" $((3 * MiB)) "$MiB" "s1 before the write"
udm_ok snapshot remove s1
refused "COW $IMG/s1.cow already holds a snapshot store \(256 exceptions\); use --reuse-cow to adopt it, or remove/zero the file to start empty" \
    snapshot create origin s2 --cow "$IMG/s1.cow"
udm_ok snapshot create origin s2 --cow "$IMG/s1.cow" --reuse-cow
expect_same "$(disk_file s2)" $((3 * MiB)) "$WORK/origin.orig" $((3 * MiB)) "$MiB" "s2 adopted s1's exceptions"
truncate -s 8M "$IMG/zeros.cow"
udm_ok snapshot create origin s3 --cow "$IMG/zeros.cow"
expect_same "$(disk_file s3)" $((3 * MiB)) "$WORK/p2" 0 "$MiB" "s3 starts empty, at the origin as it is"

log "snapshot topology: remove, load and snapshot create that would break it are refused"
refused "origin has snapshots s2 s3: remove them first or use --force" remove origin
refused "'origin-real' holds the data of 'origin' under its snapshots; snapshot 'origin' instead" \
    snapshot create origin-real x --cow "$IMG/x.cow"
refused "'origin' has snapshots s2 s3: .*--force" load origin --table "0 $SECTORS linear $O 0"
refused "'s2' is a snapshot of 'origin'" load s2 --table "0 $SECTORS linear $O 0"
refused "'origin-real' holds the data of 'origin'" load origin-real --table "0 $SECTORS linear $B 0"
refused "'s2' is a snapshot of 'origin'; snapshots of snapshots" snapshot create s2 x --cow "$IMG/x.cow"
[[ ! -e $IMG/x.cow ]] || fail "a refused snapshot create left its COW file"

log "the topology is kept across a restart, and read from the tables of state saved without it"
stop_daemon
grep -q '"snapshots"' "$STATE/devices.json" || fail "the saved state has no snapshot group"
start_daemon
refused "origin has snapshots s2 s3: remove them first or use --force" remove origin
udm snapshot list >"$WORK/list.saved" || fail "snapshot list failed"
grep -Eq '^origin +s2 ' "$WORK/list.saved" && grep -Eq '^origin +s3 ' "$WORK/list.saved" ||
    fail "snapshot list after restart: $(cat "$WORK/list.saved")"
stop_daemon
python3 -c 'import json, sys
disks = json.load(open(sys.argv[1]))
for disk in disks: disk.pop("snapshots", None)
json.dump(disks, open(sys.argv[1], "w"))' "$STATE/devices.json" || fail "cannot rewrite the saved state"
grep -q '"snapshots"' "$STATE/devices.json" && fail "the snapshot groups are still in the saved state"
start_daemon
refused "origin has snapshots s2 s3: remove them first or use --force" remove origin
udm snapshot list >"$WORK/list" || fail "snapshot list failed"
diff "$WORK/list.saved" "$WORK/list" >&2 || fail "snapshot list from old state differs"

log "no merge while the origin or the snapshot is open"
LOOP=$(attach_loop "$ORIGIN")
refused "cannot merge 's2' while 'origin' is open \(1 handle\)" snapshot merge s2
grep -q -- "--force" "$WORK/err" && fail "the merge refusal suggests --force: $(cat "$WORK/err")"
detach_loop "$LOOP"
exec 7<"$(disk_file s2)"
refused "cannot merge 's2' while 's2' is open" snapshot merge s2
exec 7<&-
udm_ok snapshot merge s2
expect_same "$ORIGIN" 0 "$WORK/origin.orig" 0 $((16 * MiB)) "origin after merging s2"
udm snapshot list >"$WORK/list" || fail "snapshot list failed"
grep -q 's2' "$WORK/list" && fail "s2 still listed after its merge: $(cat "$WORK/list")"
expect_table origin "0 $SECTORS snapshot-origin $MNT/origin-real"
cmp "$O" "$WORK/origin.orig" || fail "the origin image after the merge is not s2's content"

log "remove --force takes the origin with its snapshots and its real disk"
udm_ok remove origin --force
for disk in origin origin-real s3; do disk_listed "$disk" && fail "$disk still listed after remove origin --force"; done
disk_listed other || fail "remove --force took another disk"
[[ $(udm snapshot list | grep -c '') == 1 ]] || fail "snapshot list after remove --force: $(udm snapshot list)"
