#!/usr/bin/env bash
# Requests held in a disk (suspended) or waiting in its queue are all answered when the disk
# or the daemon goes away: `udm remove --force` fails them with EIO and the daemon goes on;
# SIGTERM answers them and exits; after kill -9 the clients get errors, not a hang, and a new
# daemon has every write acknowledged before the suspend. Every wait is bounded.
source "$(dirname "$0")/functions.sh"

MiB=$((1024 * 1024))
X=$(make_image x.img 64M)
Y=$(make_image y.img 64M)
make_pattern "$WORK/p" $((4 * MiB)) 51

# held_fio NAME: fio (libaio, 2 x 64 deep) writing NAME in the background; sets F
held_fio() {
    fio --name=held --filename="$(disk_file "$1")" --rw=randwrite --bs=4k --size=16M --offset_increment=16M \
        --direct=1 --ioengine=libaio --iodepth=64 --numjobs=2 --verify_state_save=0 >"$WORK/fio-$1.out" 2>&1 &
    F=$!
    track_pid "$F"
    sleep 2
    pid_alive "$F" || fail "fio on $1 finished while $1 was suspended: $(tail -n 5 "$WORK/fio-$1.out")"
}

# expect_answered PID WHAT: the client ends within 30 s (with an error: its disk went away)
expect_answered() {
    wait_gone "$1" 30 || fail "$2 still waiting 30 s later: its requests were not answered"
    local rc=0
    wait "$1" || rc=$?
    ((rc != 0)) || fail "$2 succeeded, though its disk went away under held writes"
}

start_daemon --queue-depth 16
udm_ok create x --table "0 131072 linear $X 0"
udm_ok create y --table "0 131072 linear $Y 0"
write_at "$WORK/p" 0 "$(disk_file x)" 0 $((4 * MiB)) direct || fail "writing x's pattern"

log "remove --force under held and queued requests"
udm_ok suspend x
held_fio x
udm_ok remove x --force
expect_answered "$F" "fio on x after remove --force"
udm_ok ls
write_at "$WORK/p" 0 "$(disk_file y)" 0 $((4 * MiB)) direct || fail "y after x was removed"
expect_same "$Y" 0 "$WORK/p" 0 $((4 * MiB)) "y after x was removed"
expect_same "$X" 0 "$WORK/p" 0 $((4 * MiB)) "x's data acknowledged before the suspend"

log "SIGTERM under held requests"
udm_ok create x --table "0 131072 linear $X 0"
udm_ok suspend x
held_fio x
kill -TERM "$DAEMON_PID"
expect_answered "$F" "fio on x after SIGTERM"
wait_gone "$DAEMON_PID" 30 || fail "daemon still running 30 s after SIGTERM with requests held"
DAEMON_PID=
is_mounted "$MNT" && fail "FUSE mount still present after SIGTERM"

log "kill -9 under held requests; a new daemon has what was acknowledged"
start_daemon --queue-depth 16
expect_same "$(disk_file x)" 0 "$WORK/p" 0 $((4 * MiB)) "x after restart"
udm_ok suspend x
held_fio x
kill9_daemon
expect_answered "$F" "fio on x after kill -9"
start_daemon
expect_same "$(disk_file x)" 0 "$WORK/p" 0 $((4 * MiB)) "x after kill -9 and restart"
expect_same "$(disk_file y)" 0 "$WORK/p" 0 $((4 * MiB)) "y after kill -9 and restart"
stop_daemon
