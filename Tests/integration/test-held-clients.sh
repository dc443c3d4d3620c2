#!/usr/bin/env bash
# Clients and unmounts that go away while a disk holds their requests: every request is
# answered once and the daemon goes on.
# - fio (libaio) and a synchronous dd on suspended x killed with -9 (the kernel may send
#   FUSE_INTERRUPT for dd's request): after `udm resume x` both are gone, x's data outside
#   their range is intact, y was served all along, and x takes new writes.
# - `fusermount3 -u` while x holds fio's writes is refused (the files are open); the daemon
#   goes on and after resume fio --verify is clean.
# - a lazy unmount (`umount -l`) while x holds fio's writes: the open files keep the
#   connection, the control socket still answers, resume lets every held write complete, and when the last file closes the daemon ends by itself, cleanly; a new
#   daemon has every acknowledged write (fio --verify_only).
# Every wait is bounded, so a request that is never answered fails the test by timeout.
source "$(dirname "$0")/functions.sh"

MiB=$((1024 * 1024))
X=$(make_image x.img 64M)
Y=$(make_image y.img 64M)
make_pattern "$WORK/p" $((8 * MiB)) 61

# held_fio NAME VERIFY: fio writing the first 32 MiB of NAME with crc32c headers (libaio, 2 x 64
# deep), which must still be running 2 s later; with VERIFY=1 it reads back and checks them.
# Sets F.
held_fio() {
    fio --name=held --filename="$(disk_file "$1")" --rw=randwrite --bs=4k --size=16M --offset_increment=16M \
        --direct=1 --ioengine=libaio --iodepth=64 --numjobs=2 --verify_state_save=0 --group_reporting \
        --verify=crc32c --do_verify="$2" --randrepeat=1 >"$WORK/fio-$1.out" 2>&1 &
    F=$!
    track_pid "$F"
    sleep 2
    pid_alive "$F" || fail "fio on $1 finished while $1 was suspended: $(tail -n 5 "$WORK/fio-$1.out")"
}

# expect_verified WHAT: the held fio ends within 120 s with no error (and its verify clean)
expect_verified() {
    wait_gone "$F" 120 || fail "fio still running 120 s after $1"
    local rc=0
    wait "$F" || rc=$?
    ((rc == 0)) || fail "fio --verify failed after $1 (status $rc): $(tail -n 20 "$WORK/fio-x.out")"
    grep -q "err= 0" "$WORK/fio-x.out" || fail "fio reported errors after $1: $(tail -n 20 "$WORK/fio-x.out")"
}

# expect_y_served WHILE: y reads back its pattern
expect_y_served() {
    timeout 20 dd if="$(disk_file y)" of="$WORK/y.out" bs=1M count=4 iflag=direct status=none ||
        fail "reading y stalled or failed while $1"
    expect_same "$WORK/y.out" 0 "$WORK/p" 0 $((4 * MiB)) "y while $1"
}

start_daemon --queue-depth 32
udm_ok create x --table "0 131072 linear $X 0"
udm_ok create y --table "0 131072 linear $Y 0"
write_at "$WORK/p" 0 "$(disk_file y)" 0 $((4 * MiB)) direct || fail "writing y's pattern"
# x's last 8 MiB hold the pattern; no client below writes there
write_at "$WORK/p" 0 "$(disk_file x)" $((56 * MiB)) $((8 * MiB)) direct || fail "writing x's pattern"

log "clients killed with -9 while x holds (and queues) their requests"
udm_ok suspend x
held_fio x 0
fio_pid=$F
dd if=/dev/zero of="$(disk_file x)" bs=4k count=1 seek=9000 oflag=direct conv=notrunc status=none 2>/dev/null &
dd_pid=$!
track_pid "$dd_pid"
sleep 1
kill -KILL "$fio_pid" "$dd_pid"
expect_y_served "x held the requests of killed clients"
udm info x >"$WORK/info.out" || fail "udm info x failed"
grep -Eq '^Queue depth: +32 \(32 in flight, [1-9][0-9]* waiting\)$' "$WORK/info.out" ||
    fail "x did not hold a full queue and waiting requests: $(grep 'Queue depth' "$WORK/info.out")"
udm_ok resume x
wait_gone "$fio_pid" 30 || fail "killed fio still there 30 s after resume: its requests were not answered"
wait_gone "$dd_pid" 30 || fail "killed dd still there 30 s after resume: its request was not answered"
wait "$fio_pid" "$dd_pid" 2>/dev/null || true
pid_alive "$DAEMON_PID" || fail "daemon died after the clients were killed"
udm info x >"$WORK/info.out"
grep -Eq '^Queue depth: +32 \(0 in flight, 0 waiting\)$' "$WORK/info.out" ||
    fail "requests left over after resume: $(grep 'Queue depth' "$WORK/info.out")"
expect_same "$X" $((56 * MiB)) "$WORK/p" 0 $((8 * MiB)) "x outside the killed clients' range"
write_at "$WORK/p" 0 "$(disk_file x)" 0 $((1 * MiB)) direct || fail "writing x after the killed clients"
expect_same "$X" 0 "$WORK/p" 0 $((1 * MiB)) "x written after the killed clients"

log "fusermount3 -u while x holds writes: refused, the daemon goes on"
udm_ok suspend x
held_fio x 1
rc=0
timeout 20 fusermount3 -u "$MNT" >"$WORK/fusermount.out" 2>&1 || rc=$?
((rc != 124)) || fail "fusermount3 -u hung while x held requests"
((rc != 0)) || fail "fusermount3 -u unmounted a mount with open files"
fuse_mount_live || fail "the mount is gone or dead after a refused fusermount3 -u"
expect_y_served "fusermount3 -u was refused"
udm_ok resume x
expect_verified "resume after a refused fusermount3 -u"

log "lazy unmount while x holds writes: served until the last close, then the daemon ends"
udm_ok suspend x
held_fio x 0   # (fio's verify pass would open the file again, by a path that is gone)
timeout 20 umount -l "$MNT" || fail "umount -l failed or hung"
is_mounted "$MNT" && fail "the mount is still listed after umount -l"
timeout 10 "$UDM_BIN" ls >/dev/null || fail "the control socket stopped answering after umount -l"
udm_ok resume x
expect_verified "resume after a lazy unmount"
wait_gone "$DAEMON_PID" 30 || fail "daemon still running 30 s after its mount went away and its files closed"
rc=0
wait "$DAEMON_PID" || rc=$?
DAEMON_PID=
((rc == 0)) || fail "daemon exited with status $rc after its mount went away: $(tail -n 5 "$DAEMON_LOG")"
grep -q "unmounted" "$DAEMON_LOG" || fail "the daemon did not log why it ended: $(tail -n 3 "$DAEMON_LOG")"

log "a new daemon has every acknowledged write"
start_daemon
expect_same "$(disk_file x)" $((56 * MiB)) "$WORK/p" 0 $((8 * MiB)) "x's pattern after the restart"
fio --name=held --filename="$(disk_file x)" --rw=randwrite --bs=4k --size=16M --offset_increment=16M \
    --direct=1 --ioengine=libaio --numjobs=2 --verify=crc32c --verify_only --randrepeat=1 \
    --verify_state_save=0 --group_reporting >"$WORK/fio-verify.out" 2>&1 ||
    fail "x lost writes acknowledged before the lazy unmount: $(tail -n 20 "$WORK/fio-verify.out")"
expect_same "$(disk_file y)" 0 "$WORK/p" 0 $((4 * MiB)) "y after the restart"
stop_daemon
