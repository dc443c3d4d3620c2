#!/usr/bin/env bash
# The command line: help for every verb, targets, table sources (flag, file, stdin), info and
# state, one-line errors, remove of an open disk, --socket, socket mode, background daemon.
source "$(dirname "$0")/functions.sh"

VERBS=(daemon create load suspend resume clear remove ls table status info message targets shutdown)

log "help"
"$UDM_BIN" --help >"$WORK/help" 2>&1 || fail "udm --help exited non-zero"
[[ -s $WORK/help ]] || fail "udm --help printed nothing"
for v in "${VERBS[@]}"; do
    grep -qw "$v" "$WORK/help" || fail "udm --help does not mention $v"
    "$UDM_BIN" "$v" --help >"$WORK/help.$v" 2>&1 || fail "udm $v --help exited non-zero"
    [[ -s $WORK/help.$v ]] || fail "udm $v --help printed nothing"
done
rc=0
"$UDM_BIN" no-such-verb >/dev/null 2>&1 || rc=$?
((rc != 0)) || fail "udm no-such-verb exited 0"

A=$(make_image a.img 4M)
start_daemon

log "socket: mode 0600, --socket flag, UDM_SOCKET"
[[ -S $SOCK ]] || fail "$SOCK is not a socket"
mode=$(stat -c %a "$SOCK")
[[ $mode == 600 ]] || fail "control socket mode is $mode, expected 600"
env -u UDM_SOCKET timeout 30 "$UDM_BIN" ls --socket "$SOCK" >/dev/null || fail "udm ls --socket failed"
UDM_SOCKET=$SOCK timeout 30 "$UDM_BIN" ls >/dev/null || fail "udm ls with UDM_SOCKET failed"
rc=0
UDM_SOCKET=$TESTDIR/nothing.sock timeout 30 "$UDM_BIN" ls >/dev/null 2>"$WORK/err" || rc=$?
((rc != 0)) || fail "udm ls against a missing socket exited 0"
[[ $(grep -c '' "$WORK/err") == 1 ]] || fail "udm ls against a missing socket: not one line: $(cat "$WORK/err")"

log "targets"
udm targets >"$WORK/targets" || fail "udm targets failed"
for t in linear error zero; do
    grep -qE "^$t([[:space:]]|$)" "$WORK/targets" || fail "udm targets does not list $t: $(cat "$WORK/targets")"
done

log "create from --table, --table-file, stdin"
udm_ok create c1 --table "0 2048 linear $A 0"
printf '# comment\n0 1024 linear %s 2048\n1024 1024 zero\n' "$A" >"$WORK/t2"
udm_ok create c2 --table-file "$WORK/t2"
printf '0 512 error\n' | udm create c3 || fail "create from stdin failed"
expect_table c1 "0 2048 linear $A 0"
expect_table c2 "0 1024 linear $A 2048
1024 1024 zero"
expect_table c3 "0 512 error"
expect_size "$MNT/c3" $((512 * 512))
for n in c1 c2 c3; do
    disk_listed "$n" || fail "udm ls does not list $n"
    [[ -f $MNT/$n ]] || fail "$MNT/$n missing"
done
udm table >"$WORK/alltables" || fail "udm table (all) failed"
udm status >/dev/null || fail "udm status (all) failed"
udm info >"$WORK/allinfo" || fail "udm info (all) failed"
for n in c1 c2 c3; do
    grep -q "$n" "$WORK/alltables" || fail "udm table (all) does not mention $n"
    grep -q "$n" "$WORK/allinfo" || fail "udm info (all) does not mention $n"
done
grep -q "^0 1024 linear $A 2048$" <<<"$(udm table c2)" || fail "udm table c2 not in dmsetup form: $(udm table c2)"
grep -qE '^0 1024 linear ?' <<<"$(udm status c2)" || fail "udm status c2: $(udm status c2)"
grep -qE '^1024 1024 zero ?' <<<"$(udm status c2)" || fail "udm status c2: $(udm status c2)"

log "info shows the file and the state"
udm info c1 >"$WORK/info" || fail "udm info c1 failed"
grep -qE "^File:[[:space:]]+$MNT/c1\$" "$WORK/info" || fail "udm info c1 has no 'File: $MNT/c1' line: $(cat "$WORK/info")"
grep -qi 'active' "$WORK/info" || fail "udm info c1 does not say ACTIVE: $(cat "$WORK/info")"
grep -qi 'suspended' "$WORK/info" && fail "udm info c1 says suspended before suspend: $(cat "$WORK/info")"
udm_ok suspend c1
udm info c1 >"$WORK/info" || fail "udm info c1 failed"
grep -qi 'suspended' "$WORK/info" || fail "udm info c1 does not say SUSPENDED: $(cat "$WORK/info")"
udm_ok load c1 --table "0 2048 linear $A 4096"
udm info c1 >"$WORK/info" || fail "udm info c1 failed"
grep -qi 'inactive' "$WORK/info" || fail "udm info c1 shows no inactive table after load: $(cat "$WORK/info")"
udm_ok clear c1
udm info c1 >"$WORK/info" || fail "udm info c1 failed"
grep -qi 'inactive' "$WORK/info" && fail "udm info c1 still shows an inactive table after clear: $(cat "$WORK/info")"
udm_ok resume c1
udm info c1 >"$WORK/info" || fail "udm info c1 failed"
grep -qi 'suspended' "$WORK/info" && fail "udm info c1 says suspended after resume: $(cat "$WORK/info")"
expect_table c1 "0 2048 linear $A 0"

log "one-line errors: unknown disk, duplicate name, bad name, message to linear"
for v in table status info suspend resume clear remove; do
    expect_udm_error "$WORK/err" "$v" no-such-disk
done
expect_udm_error "$WORK/err" load no-such-disk --table "0 8 zero"
expect_udm_error "$WORK/err" message no-such-disk 0 hello
expect_udm_error "$WORK/err" create c1 --table "0 8 zero"
expect_table c1 "0 2048 linear $A 0"
expect_udm_error "$WORK/err" create "bad/name" --table "0 8 zero"
expect_udm_error "$WORK/err" message c1 0 no-such-message

log "remove: refused while open, --force works"
exec 3<>"$MNT/c2"
expect_udm_error "$WORK/err" remove c2
echo "    $(cat "$WORK/err")" >&2
disk_listed c2 || fail "c2 vanished after a refused remove"
[[ -f $MNT/c2 ]] || fail "$MNT/c2 vanished after a refused remove"
udm_ok remove --force c2
disk_listed c2 && fail "c2 still listed after remove --force"
[[ -e $MNT/c2 ]] && fail "$MNT/c2 still exists after remove --force"
# I/O on the stale descriptor must not take the daemon down
timeout 10 dd bs=4096 count=1 status=none <&3 >/dev/null 2>&1 || true
exec 3>&-
udm ls >/dev/null || fail "daemon stopped answering after I/O on a force-removed disk"
udm_ok remove c3

log "remove is refused while a loop device holds the file"
LOOP=$(attach_loop "$MNT/c1")
grep -qE '^Open count:[[:space:]]+[1-9]' <<<"$(udm info c1)" || fail "udm info c1: open count is not positive with a loop attached"
expect_udm_error "$WORK/err" remove c1
detach_loop "$LOOP"
[[ -e $MNT/c3 ]] && fail "$MNT/c3 still exists after remove"

log "udm daemon without --foreground: returns when ready, prints its pid"
stop_daemon
rc=0
timeout 60 "$UDM_BIN" daemon --mount "$MNT" --state-dir "$STATE" --socket "$SOCK" \
    </dev/null >"$WORK/bg.out" 2>&1 || rc=$?
((rc == 0)) || fail "udm daemon (background) exited $rc: $(cat "$WORK/bg.out")"
pid=$(sed -n 's/.*udm daemon running (pid \([0-9]*\)).*/\1/p' "$WORK/bg.out")
[[ -n $pid ]] || fail "udm daemon did not print 'udm daemon running (pid N)': $(cat "$WORK/bg.out")"
DAEMON_PIDS+=("$pid")
DAEMON_PID=$pid
pid_alive "$pid" || fail "background daemon pid $pid is not running"
fuse_mount_live || fail "background daemon returned before the mount was ready"
disk_listed c1 || fail "c1 not restored by the background daemon"
expect_table c1 "0 2048 linear $A 0"
udm_ok shutdown
wait_gone "$pid" 20 || fail "background daemon still running after udm shutdown"
DAEMON_PID=
is_mounted "$MNT" && fail "mount still there after udm shutdown"
true
