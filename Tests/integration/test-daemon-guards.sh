#!/usr/bin/env bash
# Guard rails around the daemon's life and its disks (issue 12 items 3, 7, 8):
# - a second daemon on a live daemon's mount point (or socket) refuses with one line naming the
#   running daemon, and leaves the live mount and its data alone; a daemon killed with -9 still
#   comes back (it clears its own stale mount);
# - udm-mount refuses a disk already attached to a loop device, naming that device;
# - `udm shutdown` is refused while a disk is open (naming it), `--force` overrides, and it
#   returns only once the daemon process has exited.
source "$(dirname "$0")/functions.sh"

A=$(make_image a.img 64M)
make_pattern "$WORK/p" 1048576 7
start_daemon
udm_ok create data --table "0 131072 linear $A 0"
write_at "$WORK/p" 0 "$MNT/data" 0 1048576 direct

S2=$TESTDIR/second.sock
STATE2=$TESTDIR/state2
# stop_second: if a second daemon did start (the bug), stop it so cleanup finds only ours.
stop_second() {
    timeout -k 2 20 "$UDM_BIN" shutdown --force --socket "$S2" >/dev/null 2>&1 || true
}

# expect_first_untouched WHAT: the first daemon still serves its mount and its data.
expect_first_untouched() {
    pid_alive "$DAEMON_PID" || fail "$1: the first daemon died"
    [[ $(mount_count "$MNT") == 1 ]] || fail "$1: $(mount_count "$MNT") mounts at $MNT, expected the first daemon's one"
    fuse_mount_live || fail "$1: the first daemon's mount no longer answers"
    expect_same "$WORK/p" 0 "$MNT/data" 0 1048576 "$1: data through the first daemon"
    disk_listed data || fail "$1: udm ls no longer lists data"
}

for mode in --foreground background; do
    log "a second daemon ($mode) on the same mount point refuses"
    rc=0
    timeout -k 5 20 "$UDM_BIN" daemon ${mode/background/} --mount "$MNT" --state-dir "$STATE2" --socket "$S2" \
        >"$WORK/second.out" 2>"$WORK/second.err" || rc=$?
    ((rc != 0)) || { stop_second; fail "a second daemon ($mode) on $MNT started: $(cat "$WORK/second.out")"; }
    ((rc != 124 && rc != 137)) || fail "a second daemon ($mode) on $MNT ran on instead of refusing"
    [[ $(grep -c '' "$WORK/second.err") == 1 ]] || fail "second daemon ($mode): not one line: $(cat "$WORK/second.err")"
    grep -q "pid $DAEMON_PID" "$WORK/second.err" || fail "second daemon ($mode): the refusal does not name pid $DAEMON_PID: $(cat "$WORK/second.err")"
    grep -qF "socket $SOCK" "$WORK/second.err" || fail "second daemon ($mode): the refusal does not name socket $SOCK: $(cat "$WORK/second.err")"
    if grep -qs "clearing stale mount" "$WORK/second.err" "$STATE2/daemon.log"; then
        fail "second daemon ($mode) cleared the live mount"
    fi
    [[ -e $S2 ]] && fail "second daemon ($mode) left a socket at $S2"
    expect_first_untouched "after a second daemon ($mode)"
done

log "a second daemon on the same socket (another mount point) refuses"
expect_udm_error "$WORK/err" daemon --foreground --mount "$TESTDIR/mnt2" --state-dir "$STATE2" --socket "$SOCK"
grep -q "pid $DAEMON_PID" "$WORK/err" || fail "same socket: the refusal does not name pid $DAEMON_PID: $(cat "$WORK/err")"
is_mounted "$TESTDIR/mnt2" && fail "same socket: the second daemon mounted $TESTDIR/mnt2"
expect_first_untouched "after a second daemon on the same socket"

log "a daemon killed with -9 comes back and clears its own stale mount"
kill9_daemon
start_daemon
[[ $(mount_count "$MNT") == 1 ]] || fail "$(mount_count "$MNT") mounts at $MNT after the restart, expected 1"
grep -q "clearing stale mount" "$DAEMON_LOG" || fail "the restarted daemon did not clear the stale mount"
expect_same "$WORK/p" 0 "$MNT/data" 0 1048576 "data after kill -9 and restart"

log "udm-mount refuses a disk already attached to a loop device"
mkfs.ext4 -q "$MNT/data"
LOOP=$(attach_loop "$MNT/data")
mkdir -p "$WORK/fs" "$WORK/fs2"
rc=0
timeout -k 5 30 "$REPO_ROOT/mount/udm-mount" data "$WORK/fs2" >"$WORK/um.out" 2>"$WORK/um.err" || rc=$?
if ((rc == 0)); then
    second=$(tail -n 1 "$WORK/um.out")
    umount "$WORK/fs2"
    losetup -d "$second"
    fail "udm-mount attached a second loop device ($second) to data, already on $LOOP"
fi
[[ $(grep -c '' "$WORK/um.err") == 1 ]] || fail "udm-mount refusal: not one line: $(cat "$WORK/um.err")"
grep -qF "$LOOP" "$WORK/um.err" || fail "udm-mount refusal does not name $LOOP: $(cat "$WORK/um.err")"
[[ $(losetup -j "$MNT/data" | grep -c '') == 1 ]] || fail "loops on data: $(losetup -j "$MNT/data")"
is_mounted "$WORK/fs2" && fail "udm-mount mounted $WORK/fs2"
detach_loop "$LOOP"

log "udm-mount on a free disk, then again while it is mounted"
LOOP=$(timeout -k 5 30 "$REPO_ROOT/mount/udm-mount" data "$WORK/fs") || fail "udm-mount data failed"
echo "$LOOP" >>"$LOOP_LIST"
rc=0
timeout -k 5 30 "$REPO_ROOT/mount/udm-mount" data "$WORK/fs2" >/dev/null 2>"$WORK/um.err" || rc=$?
((rc != 0)) || fail "udm-mount mounted data twice"
grep -qF "$LOOP" "$WORK/um.err" || fail "udm-mount refusal does not name $LOOP: $(cat "$WORK/um.err")"

log "shutdown is refused while a disk is mounted"
make_pattern "$WORK/f" 65536 9
cp "$WORK/f" "$WORK/fs/f" && sync
expect_udm_error "$WORK/err" shutdown
grep -q "data" "$WORK/err" || fail "the shutdown refusal does not name data: $(cat "$WORK/err")"
grep -q -- "--force" "$WORK/err" || fail "the shutdown refusal does not mention --force: $(cat "$WORK/err")"
pid_alive "$DAEMON_PID" || fail "the daemon exited although shutdown was refused"
fuse_mount_live || fail "the FUSE mount went away although shutdown was refused"
cp "$WORK/f" "$WORK/fs/g" && sync || fail "the mounted ext4 fails after a refused shutdown"
cmp "$WORK/f" "$WORK/fs/f" || fail "file f changed"
timeout -k 5 30 "$REPO_ROOT/mount/udm-umount" "$WORK/fs" || fail "udm-umount failed"
grep -vxF "$LOOP" "$LOOP_LIST" >"$LOOP_LIST.tmp" || true
mv "$LOOP_LIST.tmp" "$LOOP_LIST"
e2fsck -fn "$MNT/data" >"$WORK/fsck" 2>&1 || fail "e2fsck after the refused shutdown: $(tail -n 5 "$WORK/fsck")"

log "shutdown --force with a file open; shutdown returns after the daemon has exited"
exec 3<"$MNT/data"
pid=$DAEMON_PID
udm_ok shutdown --force
pid_alive "$pid" && fail "udm shutdown --force returned while the daemon (pid $pid) still runs"
exec 3<&-
wait "$pid" || fail "the daemon exited with status $? after udm shutdown --force"
DAEMON_PID=
is_mounted "$MNT" && fail "FUSE mount still present after udm shutdown --force"

log "a plain shutdown with nothing open"
start_daemon
pid=$DAEMON_PID
udm_ok shutdown
pid_alive "$pid" && fail "udm shutdown returned while the daemon (pid $pid) still runs"
wait "$pid" || fail "the daemon exited with status $? after udm shutdown"
DAEMON_PID=
is_mounted "$MNT" && fail "FUSE mount still present after udm shutdown"
true
