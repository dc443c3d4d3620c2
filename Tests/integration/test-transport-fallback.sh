#!/usr/bin/env bash
# Where FUSE over io_uring cannot run, --transport auto falls back to legacy and says why, and
# --transport uring refuses with one line and mounts nothing; where it is merely switched off
# (enable_uring = N), --transport uring turns it on. The kernel settings are set for the test
# (io_uring_disabled = 2, enable_uring = N) and put back on exit, whatever happens.
source "$(dirname "$0")/functions.sh"

param=/sys/module/fuse/parameters/enable_uring
disabled=/proc/sys/kernel/io_uring_disabled
if [[ ! -e $param || ! -w $disabled ]]; then
    log "skipped: this kernel has no $param or no writable $disabled"
    exit 0
fi
was_disabled=$(cat "$disabled")
was_enabled=$(cat "$param")
restore_settings() {
    echo "$was_disabled" >"$disabled"
    echo "$was_enabled" >"$param"
}
trap 'rc=$?; restore_settings; (exit $rc); _cleanup' EXIT

MiB=$((1024 * 1024))
A=$(make_image a.img 8M)
make_pattern "$WORK/p" $MiB 11

log "io_uring disabled (kernel.io_uring_disabled = 2): auto falls back to legacy, with the reason"
echo 2 >"$disabled"
start_daemon --transport auto
grep -q "transport: legacy (io_uring not used: io_uring is disabled (kernel.io_uring_disabled = 2))" "$DAEMON_LOG" ||
    fail "auto: no fallback line naming io_uring_disabled: $(grep transport "$DAEMON_LOG")"
udm_ok create d --table "0 8192 linear $A 2048"
udm info d | grep -qx "Transport: *legacy" || fail "udm info d: $(udm info d)"
write_at "$WORK/p" 0 "$(disk_file d)" 0 $MiB direct || fail "a direct write over the legacy fallback"
expect_same "$A" $((2048 * 512)) "$WORK/p" 0 $MiB "the write in the image"
stop_daemon

log "io_uring disabled: --transport uring refuses with one line and mounts nothing"
rc=0
timeout 30 "$UDM_BIN" daemon --foreground --mount "$MNT" --state-dir "$STATE" --socket "$SOCK" --transport uring \
    >"$WORK/uring.out" 2>"$WORK/uring.err" || rc=$?
((rc != 0 && rc != 124)) || fail "udm daemon --transport uring: status $rc with io_uring disabled"
[[ $(grep -c . "$WORK/uring.err") == 1 ]] || fail "expected one line: $(cat "$WORK/uring.err")"
grep -q "io_uring_disabled = 2" "$WORK/uring.err" || fail "the error does not name the cause: $(cat "$WORK/uring.err")"
is_mounted "$MNT" && fail "udm daemon --transport uring mounted $MNT with io_uring disabled"
echo "$was_disabled" >"$disabled"

log "enable_uring = N: --transport uring turns it on and serves over the rings"
echo N >"$param"
start_daemon --transport uring
[[ $(cat "$param") == Y ]] || fail "enable_uring is still $(cat "$param")"
udm info d | grep -qx "Transport: *uring" || fail "udm info d: $(udm info d)"
cmp -s <(read_at "$(disk_file d)" 0 $MiB direct) "$WORK/p" || fail "d reads back different over the rings"
stop_daemon
