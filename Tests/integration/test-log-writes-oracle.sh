#!/usr/bin/env bash
# udm's log-writes writes the kernel's log, byte for byte: the sequence of Tests/oracle/
# log-writes-steps.sh (O_DIRECT writes, a flush, a FUA write, a discard, marks, a removal
# that logs the end mark) gives the transcript the real dm-log-writes gave
# (Tests/oracle/log-writes.kernel, recorded with Tests/oracle/log-writes.sh), the same data
# disk, and the same log disk (Tests/oracle/log-writes.kernel.log.gz). tools/replay-log reads
# the kernel's log and rebuilds the kernel's data disk from it.
source "$(dirname "$0")/functions.sh"
ORACLE=$REPO_ROOT/Tests/oracle

DATA=$(make_image data.img 1M)
LOG=$(make_image log.img 1M)
start_daemon
udm_ok create lw --table "0 2048 log-writes $DATA $LOG"

DEV=$(disk_file lw) DD=dd TMPF=$WORK/block
lw_status() { udm status lw | cut -d' ' -f4-; }
lw_mark() { udm message lw 0 mark "$1"; }
# fallocate(1) fsyncs after punching, and blkdiscard does not: punch without the fsync.
lw_discard() {
    python3 -c 'import ctypes, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
libc = ctypes.CDLL(None, use_errno=True)
if libc.fallocate(fd, 3, ctypes.c_long(int(sys.argv[2])), ctypes.c_long(int(sys.argv[3]))) != 0:
    sys.exit(os.strerror(ctypes.get_errno()))' "$DEV" "$1" "$2"
}
# A FUSE file with direct_io is not fsynced after an O_DSYNC write as a block device is:
# send the flush the kernel's block layer sends by itself.
lw_fua_write() { w "$1" "$2" "$3" dsync && "$DD" if=/dev/null of="$DEV" conv=notrunc,fsync status=none; }
(set +eo pipefail; source "$ORACLE/log-writes-steps.sh") >"$WORK/udm.out"
udm_ok remove lw
echo "data: $(sha "$DATA")" >>"$WORK/udm.out"
echo "log: $(sha "$LOG")" >>"$WORK/udm.out"
diff -u "$ORACLE/log-writes.kernel" "$WORK/udm.out" >&2 || {
    "$REPO_ROOT/tools/replay-log" "$LOG" --list >&2 || true
    fail "udm's transcript, data or log differ from the kernel's (above)"
}
gunzip -c "$ORACLE/log-writes.kernel.log.gz" >"$WORK/kernel-log.img"
cmp "$WORK/kernel-log.img" "$LOG" || fail "udm's log is not the kernel's"

# The checker reads the kernel's log: replayed onto a zero disk it gives the kernel's data.
truncate -s 1M "$WORK/replayed.img"
out=$("$REPO_ROOT/tools/replay-log" "$WORK/kernel-log.img" --replay "$WORK/replayed.img" --no-fsck) ||
    fail "replay-log failed on the kernel's log: $out"
[[ $out == "replayed 14 of 14 entries" ]] || fail "replay-log: $out"
[[ "data: $(sha "$WORK/replayed.img")" == "$(grep '^data: ' "$ORACLE/log-writes.kernel")" ]] ||
    fail "replaying the kernel's log does not rebuild the kernel's data disk"
# Up to the mark 'first': the writes logged before it, not the 64K written after it.
truncate -s 1M "$WORK/first.img"
"$REPO_ROOT/tools/replay-log" "$WORK/kernel-log.img" --replay "$WORK/first.img" --to-mark first --no-fsck >/dev/null ||
    fail "replay-log --to-mark first failed"
expect_same "$WORK/first.img" 102400 "$DATA" 102400 4096 "the FUA write, replayed to mark first"
expect_zero "$WORK/first.img" 153600 65536 "the 64K write after mark first"
