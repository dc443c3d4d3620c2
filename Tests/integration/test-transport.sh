#!/usr/bin/env bash
# The FUSE transport (udm daemon --transport auto|uring|legacy). A bad value is refused with one
# line and mounts nothing. auto says which transport it chose, in the log, `udm info` and
# `udm stats --json`: uring where this kernel allows it (one ring per possible CPU, each an
# io_uring the daemon holds open), else legacy with the reason. Over the rings, aligned and
# partial-sector writes land at the mapped offsets and read back the same. An unmount from
# outside with every ring entry registered ends the rings (the kernel fails their commands) and
# the daemon, as on legacy, ends by itself with status 0.
source "$(dirname "$0")/functions.sh"

log "a bad --transport is refused with one line, and nothing is mounted"
rc=0
timeout 20 "$UDM_BIN" daemon --foreground --mount "$MNT" --state-dir "$STATE" --socket "$SOCK" --transport bogus \
    >"$WORK/bogus.out" 2>"$WORK/bogus.err" || rc=$?
((rc != 0)) || fail "udm daemon --transport bogus started"
[[ $(grep -c . "$WORK/bogus.err") == 1 ]] || fail "udm daemon --transport bogus: expected one line: $(cat "$WORK/bogus.err")"
grep -q -- "--transport" "$WORK/bogus.err" || fail "the error does not name --transport: $(cat "$WORK/bogus.err")"
is_mounted "$MNT" && fail "udm daemon --transport bogus mounted $MNT"

why=
param=/sys/module/fuse/parameters/enable_uring
[[ -e $param ]] || why="no $param"
[[ $(cat /proc/sys/kernel/io_uring_disabled 2>/dev/null || echo 0) == 2 ]] && why="io_uring disabled"

MiB=$((1024 * 1024))
A=$(make_image a.img 8M)
make_pattern "$WORK/p" $((2 * MiB)) 7
start_daemon --transport auto
udm_ok create d --table "0 8192 linear $A 2048"
D=$(disk_file d)

if [[ -n $why ]]; then
    log "auto falls back to legacy here ($why), saying why"
    grep -q "transport: legacy (io_uring not used: " "$DAEMON_LOG" || fail "auto: no fallback line in the log: $(tail -n 5 "$DAEMON_LOG")"
    udm info d | grep -qx "Transport: *legacy" || fail "udm info d: $(udm info d)"
    stop_daemon
    exit 0
fi

log "auto chose uring: the log, udm info and udm stats --json say so"
cpus=$(($(tr ',-' '\n\n' </sys/devices/system/cpu/possible | sort -n | tail -n 1) + 1))
grep -q "transport: uring (FUSE over io_uring, $cpus queues x " "$DAEMON_LOG" ||
    fail "auto: expected uring with $cpus queues in the log: $(grep transport "$DAEMON_LOG")"
[[ $(cat $param) == Y ]] || fail "enable_uring is $(cat $param) with the uring transport running"
udm info d | grep -qx "Transport: *uring" || fail "udm info d: $(udm info d)"
udm stats d --json | grep -q '"transport":"uring"' || fail "udm stats d --json: $(udm stats d --json)"
# open_rings: the io_uring descriptors the daemon holds (0 once it has exited)
open_rings() { { find "/proc/$DAEMON_PID/fd" -lname 'anon_inode:\[io_uring\]' 2>/dev/null || true; } | wc -l; }
rings=$(open_rings)
((rings == cpus)) || fail "the daemon holds $rings io_uring descriptors, expected one per CPU ($cpus)"

log "writes over the rings land at the mapped offsets: aligned, then partial sectors"
write_at "$WORK/p" 0 "$D" 0 $MiB direct || fail "aligned direct write"
write_at "$WORK/p" $MiB "$D" $((MiB + 100)) 5000 || fail "partial-sector write"
expect_same "$A" $((2048 * 512)) "$WORK/p" 0 $MiB "aligned write in the image"
expect_same "$A" $((2048 * 512 + MiB + 100)) "$WORK/p" $MiB 5000 "partial-sector write in the image"
expect_zero "$A" $((2048 * 512 + MiB)) 100 "bytes before the partial write"
cmp -s <(read_at "$D" 0 $MiB direct) <(head -c $MiB "$WORK/p") || fail "aligned range reads back different"
cmp -s <(read_at "$D" $((MiB + 100)) 5000) <(tail -c +$((MiB + 1)) "$WORK/p" | head -c 5000) ||
    fail "partial-sector range reads back different"

log "an unmount from outside ends the rings; the daemon ends by itself, cleanly"
umount -l "$MNT" || fail "umount -l $MNT failed"
for ((i = 0; i < 100; i++)); do
    rings=$(open_rings)
    ((rings == 0)) && break
    sleep 0.1
done
((rings == 0)) || fail "$rings rings still open 10 s after the unmount"
wait_gone "$DAEMON_PID" 30 || fail "daemon still running 30 s after its mount went away"
rc=0
wait "$DAEMON_PID" || rc=$?
DAEMON_PID=
((rc == 0)) || fail "daemon exited with status $rc after its mount went away: $(tail -n 5 "$DAEMON_LOG")"
