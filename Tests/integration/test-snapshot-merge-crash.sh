#!/usr/bin/env bash
# kill -9 the daemon at random points of a merge, ROUNDS times (default 10): after a plain
# restart the merge resumes and completes, and ORIGIN equals the snapshot every time.
source "$(dirname "$0")/functions.sh"
ROUNDS=${ROUNDS:-10}

O_IMG=$(make_image origin.img 64M)
SECTORS=$((64 * 2048))
fill_image "$O_IMG" 1
WANT=$(sha256sum <"$O_IMG")
start_daemon
udm_ok create origin --table "0 $SECTORS linear $O_IMG 0"
ORIGIN=$(disk_file origin)
interrupted=0
for ((round = 1; round <= ROUNDS; round++)); do
    rm -f "$IMG/snap.cow"
    udm_ok snapshot create origin snap --cow "$IMG/snap.cow" --chunk-size 8
    make_pattern "$WORK/new" $((SECTORS * 512)) $((round + 100))
    write_at "$WORK/new" 0 "$ORIGIN" 0 $((SECTORS * 512)) direct
    udm_ok snapshot merge snap --no-wait
    sleep "0.$((RANDOM % 8))$((RANDOM % 10))"
    [[ $(udm table origin | cut -d" " -f3) == snapshot-merge ]] && interrupted=$((interrupted + 1))
    kill9_daemon
    start_daemon
    for ((i = 0; i < 600; i++)); do
        [[ $(udm table origin | cut -d" " -f3) == snapshot-merge ]] || break
        sleep 0.1
    done
    [[ $(udm table origin) == "0 $SECTORS linear $O_IMG 0" ]] || fail "round $round: origin table $(udm table origin)"
    got=$(read_at "$ORIGIN" 0 $((SECTORS * 512)) direct | sha256sum)
    [[ $got == "$WANT" ]] || fail "round $round: the merged origin differs from the snapshot"
done
echo "killed mid-merge in $interrupted of $ROUNDS rounds" >&2
((interrupted > 0)) || fail "no round killed the daemon during a merge"
stop_daemon
