#!/usr/bin/env bash
# tools/powercut against this test's daemon: three rounds of ext4 + fsync workload, a cut to
# flakey drop_writes at a random moment, remount on the linear table; every fsynced file intact,
# files created after the cut absent, e2fsck -fn clean. The harness leaves nothing behind.
source "$(dirname "$0")/functions.sh"

start_daemon
UDM_BIN=$UDM_BIN "$REPO_ROOT/tools/powercut" --rounds 3 --socket "$SOCK" --dir "$WORK" >"$WORK/powercut.out" 2>&1 ||
    fail "tools/powercut failed: $(cat "$WORK/powercut.out")"
cat "$WORK/powercut.out" >&2
[[ $(grep -c '^round [0-9]*: .*intact.*e2fsck clean$' "$WORK/powercut.out") == 3 ]] ||
    fail "expected 3 passing rounds: $(cat "$WORK/powercut.out")"
[[ -z $(udm ls | grep -v '^No devices found$') ]] || fail "powercut left disks behind: $(udm ls)"
! grep -q " $WORK/" /proc/mounts || fail "powercut left a mount behind"
[[ -z $(losetup -n -l -O BACK-FILE | grep "$MNT/") ]] || fail "powercut left a loop device behind"

log "bad arguments are refused"
expect_fail=0
UDM_BIN=$UDM_BIN "$REPO_ROOT/tools/powercut" --rounds 0 --socket "$SOCK" >"$WORK/bad.out" 2>&1 || expect_fail=1
((expect_fail)) && grep -q -- "--rounds must be a positive number" "$WORK/bad.out" ||
    fail "tools/powercut --rounds 0 was not refused: $(cat "$WORK/bad.out")"
stop_daemon
