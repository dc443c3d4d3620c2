#!/usr/bin/env bash
# 100 cycles of `udm snapshot create` + `udm snapshot remove` on a disk with data leak
# nothing: the daemon's open descriptors and RSS stay flat (each cycle's ORIGIN-real device,
# its origin state and its COW are let go) and the origin's data is unchanged.
source "$(dirname "$0")/functions.sh"

O_IMG=$(make_image origin.img 8M)
SECTORS=16384
fill_image "$O_IMG" 7
start_daemon
udm_ok create origin --table "0 $SECTORS linear $O_IMG 0"
ORIGIN=$(disk_file origin)
BEFORE=$(sha "$O_IMG")

fds() { ls "/proc/$DAEMON_PID/fd" | wc -l; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$DAEMON_PID/status"; }

# cycle N: a snapshot, one origin write that copies out, a snapshot read, then remove it
cycle() {
    udm_ok snapshot create origin snap --cow "$IMG/snap.cow" --size 1M --chunk-size 8
    read_at "$ORIGIN" 4096 4096 direct >"$WORK/chunk"
    write_at "$WORK/chunk" 0 "$ORIGIN" 4096 4096 direct || fail "cycle $1: origin write failed"
    read_at "$(disk_file snap)" 4096 4096 direct >/dev/null || fail "cycle $1: snapshot read failed"
    udm_ok snapshot remove snap
    rm -f "$IMG/snap.cow"
}

# a few cycles first, so one-time allocations (threads, pools, caches) are behind us
for i in 1 2 3 4 5; do cycle "$i"; done
FDS0=$(fds)
RSS0=$(rss_kib)
for i in $(seq 1 100); do cycle "$i"; done
# The kernel sends FUSE RELEASE for a closed disk file asynchronously; the last cycle's devices
# go when it arrives, so allow it a moment (bounded).
for ((i = 0; i < 100; i++)); do
    FDS1=$(fds)
    ((FDS1 <= FDS0 + 2)) && break
    sleep 0.1
done
RSS1=$(rss_kib)
log "open fds $FDS0 -> $FDS1, VmRSS $RSS0 -> $RSS1 KiB"
((FDS1 <= FDS0 + 2)) || fail "descriptors grew over 100 cycles: $FDS0 -> $FDS1"
((RSS1 <= RSS0 + 8192)) || fail "RSS grew by more than 8 MiB over 100 cycles: $RSS0 -> $RSS1 KiB"
disk_listed origin-real && fail "origin-real left behind"
expect_table origin "0 $SECTORS linear $O_IMG 0"
[[ $(sha "$O_IMG") == "$BEFORE" ]] || fail "the origin's data changed"
