#!/usr/bin/env bash
# kill -9 the daemon at random moments while fio writes to a snapshotted origin; after each
# restart the snapshot still equals its checksum from creation time and its COW store reads
# without error. ROUNDS rounds (default 20; tools/soak-snapshot-crash runs more).
source "$(dirname "$0")/functions.sh"
command -v fio >/dev/null || fail "fio is not installed"
ROUNDS=${ROUNDS:-20}

# 128 MiB in 8 KiB chunks; each round writes a fresh 4 MiB region, so every round copies out.
O_IMG=$(make_image origin.img 128M)
SECTORS=262144
fill_image "$O_IMG" 11
start_daemon
udm_ok create origin --table "0 $SECTORS linear $O_IMG 0"
udm_ok snapshot create origin snap --cow "$IMG/snap.cow" --chunk-size 16
WANT=$(read_at "$(disk_file snap)" 0 $((SECTORS * 512)) direct | sha256sum)
[[ $WANT == $(sha256sum <"$O_IMG") ]] || fail "the fresh snapshot is not the origin"

for ((round = 1; round <= ROUNDS; round++)); do
    fio --thread --name=crash --filename="$(disk_file origin)" --ioengine=libaio --direct=1 --rw=randwrite \
        --bsrange=4k-64k --iodepth=8 --offset=$(((round % 30) * 4))M --size=4M --time_based --runtime=30 --randseed=$round \
        --output="$WORK/fio.$round" >/dev/null 2>&1 &
    FIO=$!
    track_pid $FIO
    sleep "0.$((RANDOM % 9 + 1))"
    kill9_daemon
    kill -KILL $FIO 2>/dev/null || true
    wait $FIO 2>/dev/null || true
    start_daemon
    got=$(read_at "$(disk_file snap)" 0 $((SECTORS * 512)) direct | sha256sum) || fail "round $round: reading the snapshot failed"
    [[ $got == "$WANT" ]] || fail "round $round: the snapshot changed after kill -9"
    status=$(udm status snap)
    [[ $status =~ ^0\ $SECTORS\ snapshot\ [0-9]+/[0-9]+\ [0-9]+$ ]] || fail "round $round: snapshot status: $status"
    echo "round $round: ok ($status)" >&2
done
udm_ok snapshot remove snap
stop_daemon
