#!/usr/bin/env bash
# Online merge: fio writes (and verifies) a region of ORIGIN while a snapshot merges into it.
# Afterwards fio's region holds fio's data (verified again) and the rest is the snapshot's.
# A second merge into a merging origin is refused.
source "$(dirname "$0")/functions.sh"
command -v fio >/dev/null || fail "fio is not installed"

O_IMG=$(make_image origin.img 96M)
SECTORS=$((96 * 2048))
fill_image "$O_IMG" 1
cp "$O_IMG" "$WORK/snap.content"
start_daemon
udm_ok create origin --table "0 $SECTORS linear $O_IMG 0"
ORIGIN=$(disk_file origin)
udm_ok snapshot create origin snap --cow "$IMG/snap.cow" --chunk-size 8
udm_ok snapshot create origin other --cow "$IMG/other.cow" --chunk-size 8
make_pattern "$WORK/new" $((64 * 1024 * 1024)) 2
write_at "$WORK/new" 0 "$ORIGIN" 0 $((64 * 1024 * 1024)) direct

FIO_ARGS=(--name=online --filename="$ORIGIN" --ioengine=libaio --direct=1 --rw=randwrite --bs=4k
    --offset=32M --size=32M --iodepth=8 --verify=crc32c --verify_fatal=1 --randrepeat=1 --randseed=7
    --verify_state_save=0)
udm_ok snapshot merge snap --no-wait
expect_udm_error "$WORK/err" snapshot merge other
grep -q "already merging" "$WORK/err" || fail "second merge: $(cat "$WORK/err")"
fio "${FIO_ARGS[@]}" --output="$WORK/fio.out" >/dev/null 2>&1 || { tail -20 "$WORK/fio.out" >&2; fail "fio during the merge failed"; }
for ((i = 0; i < 600; i++)); do
    [[ $(udm table origin | cut -d" " -f3) == snapshot-merge ]] || break
    sleep 0.1
done
[[ $(udm table origin | cut -d" " -f3) == snapshot-merge ]] && fail "the merge did not finish in 60 s"
fio "${FIO_ARGS[@]}" --verify_only --output="$WORK/fio.verify" >/dev/null 2>&1 ||
    { tail -20 "$WORK/fio.verify" >&2; fail "fio's data did not survive the merge"; }
read_at "$ORIGIN" 0 $((SECTORS * 512)) direct >"$WORK/origin.content"
expect_same "$WORK/origin.content" 0 "$WORK/snap.content" 0 $((32 * 1024 * 1024)) "before fio's region"
expect_same "$WORK/origin.content" $((64 * 1024 * 1024)) "$WORK/snap.content" $((64 * 1024 * 1024)) $((32 * 1024 * 1024)) "after fio's region"
cmp -s <(read_at "$(disk_file other)" 0 $((SECTORS * 512)) direct) "$WORK/snap.content" ||
    fail "the other snapshot changed"
udm_ok snapshot remove other
stop_daemon
