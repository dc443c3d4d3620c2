#!/usr/bin/env bash
# Crash consistency with log-writes, as xfstests uses dm-log-writes: ext4 on a loop over a
# log-writes disk, files written and fsynced with a mark after each (`udm message`), then
# tools/replay-log replays the log onto a zeroed copy of the data device: e2fsck (after
# journal recovery) is clean at every FUA and flush point; replayed to a file's mark, the
# file is there with its content; replayed to the last mark, the image is the data device,
# checksum for checksum. A corrupted log and a cut-off log make the checker fail.
source "$(dirname "$0")/functions.sh"
REPLAY=$REPO_ROOT/tools/replay-log

DATA=$(make_image data.img 64M)
LOG=$(make_image log.img 128M)
start_daemon

log "bad tables and messages: one clear line, nothing changed"
expect_udm_error "$WORK/err" create bad --table "0 131072 log-writes $DATA"
grep -q "log-writes: invalid argument count: expected <dev_path> <log_dev_path>, got 1 arguments" "$WORK/err" ||
    fail "one-argument table: $(cat "$WORK/err")"
expect_udm_error "$WORK/err" create bad --table "0 131072 log-writes $DATA $IMG/missing.img"
grep -q "argument 2 of log-writes: cannot open device $IMG/missing.img" "$WORK/err" || fail "missing log: $(cat "$WORK/err")"
disk_listed bad && fail "a refused table left disk 'bad' behind"
udm_ok create lw --table "0 131072 log-writes $DATA $LOG"
expect_udm_error "$WORK/err" message lw 0 mark
grep -q "invalid log-writes message arguments, expect 2 arguments (mark <label>), got 1" "$WORK/err" ||
    fail "mark without a label: $(cat "$WORK/err")"
expect_udm_error "$WORK/err" message lw 0 note x
grep -q "unrecognised log-writes message 'note'" "$WORK/err" || fail "unknown message: $(cat "$WORK/err")"
[[ $(udm status lw) == "0 131072 log-writes 0 0" ]] || fail "refused messages logged something: $(udm status lw)"
expect_table lw "0 131072 log-writes $DATA $LOG"
LOOP=$(attach_loop "$(disk_file lw)")

log "mkfs.ext4 through log-writes, then files written and fsynced, a mark after each"
# Inode tables and journal written now, so no lazy-init thread writes while we mark.
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$LOOP" || fail "mkfs.ext4 $LOOP failed"
udm_ok message lw 0 mark mkfs
mkdir -p "$WORK/fs"
mount "$LOOP" "$WORK/fs" || fail "mount $LOOP failed"
for i in 1 2 3 4; do
    make_pattern "$WORK/file$i" $((i * 300 * 1024)) "$i"
    dd if="$WORK/file$i" of="$WORK/fs/file$i" bs=64K conv=fsync status=none || fail "writing file$i failed"
    udm_ok message lw 0 mark "file$i"
done
mkdir "$WORK/fs/dir"
sync -f "$WORK/fs"
rm "$WORK/fs/file1"
umount "$WORK/fs" || fail "umount failed"
# Everything written is flushed before the last mark, so the log holds it all before it.
dd if=/dev/null of="$LOOP" conv=notrunc,fsync status=none
detach_loop "$LOOP"
udm_ok message lw 0 mark end
status=$(udm status lw)
[[ $status =~ ^0\ 131072\ log-writes\ ([0-9]+)\ ([0-9]+)$ ]] || fail "status: $status"
log "status: $status"
FINAL=$(sha "$DATA")
cp "$LOG" "$WORK/log.copy"   # what the checker reads, before the end mark of the removal
udm_ok remove lw

"$REPLAY" "$WORK/log.copy" --list >"$WORK/entries" || fail "replay-log --list failed"
count=$(head -n 1 "$WORK/entries" | awk '{ print $2 }')
[[ $count == "${BASH_REMATCH[1]}" ]] || fail "log has $count entries, status said ${BASH_REMATCH[1]}"
flushes=$(grep -c ' FLUSH ' "$WORK/entries" || true)
fuas=$(grep -c 'FUA' "$WORK/entries" || true)
log "log: $count entries, $flushes flushes, $fuas FUA writes"
((flushes >= 5)) || fail "only $flushes flush entries in the log"
grep -q 'MARK sector 0 sectors 0 label end$' "$WORK/entries" || fail "no mark 'end' in the log"

log "replay to every FUA and flush point, e2fsck at each"
truncate -s 64M "$WORK/replay.img"
out=$("$REPLAY" "$WORK/log.copy" --replay "$WORK/replay.img" --to-mark end --check-at fua,flush \
    --check-after-mark mkfs 2>&1) ||
    fail "replay-log found an inconsistency: $out"
log "$out"
[[ $out =~ ^replayed\ [0-9]+\ of\ $count\ entries,\ ([0-9]+)\ fua/flush\ points\ checked\ clean$ ]] ||
    fail "replay-log: $out"
points=$(sed -n '/label mkfs$/,$p' "$WORK/entries" | grep -c 'FLUSH\|FUA' || true)
((BASH_REMATCH[1] == points && points >= 5)) || fail "checked ${BASH_REMATCH[1]} points, the log has $points after mark mkfs"

[[ $(sha "$WORK/replay.img") == "$FINAL" ]] || fail "replayed to mark 'end', the image differs from the data device"

log "replay to mark file3: files 1-3 there with their content, file4 not"
truncate -s 64M "$WORK/file3.img"
"$REPLAY" "$WORK/log.copy" --replay "$WORK/file3.img" --to-mark file3 --no-fsck >/dev/null || fail "replay to file3 failed"
e2fsck -E journal_only -y "$WORK/file3.img" >/dev/null 2>&1 || true
e2fsck -fn "$WORK/file3.img" >"$WORK/fsck3" 2>&1 || { cat "$WORK/fsck3" >&2; fail "e2fsck at mark file3 not clean"; }
for i in 1 2 3; do
    debugfs -R "dump /file$i $WORK/got$i" "$WORK/file3.img" >/dev/null 2>&1 || fail "debugfs dump file$i failed"
    cmp "$WORK/file$i" "$WORK/got$i" || fail "file$i at mark file3 differs from what was written"
done
debugfs -R "stat /file4" "$WORK/file3.img" 2>&1 | grep -q 'File not found' || fail "file4 exists at mark file3"

log "a corrupted log fails the check: the superblock's writes overwritten with 0xff"
cp "$WORK/log.copy" "$WORK/log.bad"
python3 - "$WORK/log.bad" <<'PY'
import struct, sys
with open(sys.argv[1], "r+b") as f:
    count = struct.unpack("<QQQI", f.read(28))[2]
    position = 512
    for _ in range(count):
        f.seek(position)
        sector, sectors, flags, _ = struct.unpack("<QQQQ", f.read(32))
        position += 512
        if flags & 12 == 0:
            if sector <= 2 < sector + sectors:
                f.seek(position + (2 - sector) * 512)
                f.write(b"\xff" * 512)
            position += sectors * 512
PY
truncate -s 0 "$WORK/bad.img"
truncate -s 64M "$WORK/bad.img"
if out=$("$REPLAY" "$WORK/log.bad" --replay "$WORK/bad.img" --check-at fua,flush --check-after-mark mkfs 2>&1); then
    fail "replay-log passed a log whose superblock writes were corrupted: $out"
fi
[[ $out == "replay-log: entry "*"filesystem not clean after replaying"* ]] || fail "replay-log: unexpected failure: $out"
log "$(head -n 1 <<<"$out")"

log "a log cut short fails with a clear line"
head -c 1M "$WORK/log.copy" >"$WORK/log.short"
truncate -s 0 "$WORK/short.img"
truncate -s 64M "$WORK/short.img"
if out=$("$REPLAY" "$WORK/log.short" --replay "$WORK/short.img" --no-fsck 2>&1); then
    fail "replay-log passed a cut-off log: $out"
fi
[[ $out == "replay-log: "*"past the end of the log"* || $out == "replay-log: log ends at byte"* ]] ||
    fail "replay-log: unexpected failure: $out"
