#!/usr/bin/env bash
# `udm shutdown --force` stops the daemon and unmounts even when a disk file is open, and when
# a suspended disk holds a writer (the writer then finishes one way or the other: it must not
# stay blocked on a daemon that said it stopped).
source "$(dirname "$0")/functions.sh"

A=$(make_image a.img 4M)

log "shutdown with a disk file open"
start_daemon
udm_ok create s --table "0 2048 linear $A 0"
exec 3<>"$MNT/s"
pid=$DAEMON_PID
udm_ok shutdown --force
pid_alive "$pid" && fail "udm shutdown --force returned while the daemon (pid $pid) still runs"
wait "$pid" || fail "the daemon exited with status $? after udm shutdown --force"
DAEMON_PID=
exec 3>&-

log "shutdown while a suspended disk holds a writer"
start_daemon
disk_listed s || fail "s not restored"
udm_ok suspend s
head -c 65536 /dev/urandom >"$WORK/p"
write_at "$WORK/p" 0 "$MNT/s" 0 65536 direct 2>"$WORK/writer.err" &
W=$!
track_pid "$W"
sleep 1
pid_alive "$W" || fail "the writer was not held by the suspended disk"
pid=$DAEMON_PID
udm_ok shutdown --force
wait_gone "$pid" 20 || fail "daemon (pid $pid) still running 20 s after udm shutdown (a suspended disk held a writer)"
wait "$pid" || true
DAEMON_PID=
wait_gone "$W" 10 || fail "writer still blocked after the daemon exited"
is_mounted "$MNT" && fail "mount still present after shutdown"
true
