#!/usr/bin/env bash
# `udm load` + `udm resume` without a suspend, while fio does direct I/O: resume must suspend
# first (as dm's do_resume does), so the old table is never released under I/O in flight.
# Before the fix the daemon crashed within a few reloads.
source "$(dirname "$0")/functions.sh"

A=$(make_image a.img 64M)
B=$(make_image b.img 64M)
TA="0 131072 linear $A 0"
TB="0 131072 linear $B 0"

start_daemon
udm_ok create r --table "$TA"
D=$(disk_file r)
fio --name=reload --filename="$D" --rw=randrw --bs=4k --direct=1 --numjobs=4 --ioengine=psync \
    --size=64M --time_based --runtime=8 >"$WORK/fio.log" 2>&1 &
F=$!
track_pid "$F"
sleep 1
reloads=0
while pid_alive "$F"; do
    if ((reloads % 2)); then T=$TA; else T=$TB; fi
    udm_ok load r --table "$T"
    udm_ok resume r
    reloads=$((reloads + 1))
    pid_alive "$DAEMON_PID" || fail "the daemon died at reload $reloads"
done
rc=0
wait "$F" || rc=$?
((rc == 0)) || fail "fio failed (status $rc): $(grep -m3 -iE 'error|err=' "$WORK/fio.log")"
! grep 'err=' "$WORK/fio.log" | grep -qv 'err= 0' || fail "fio reported errors: $(grep -m3 'err=' "$WORK/fio.log")"
((reloads >= 20)) || fail "only $reloads reloads while fio ran"
log "$reloads reloads under I/O"
if ((reloads % 2)); then udm_ok load r --table "$TA"; udm_ok resume r; fi
expect_table r "$TA"
udm info r | grep -q 'State: *ACTIVE' || fail "the disk is not active after the reloads: $(udm info r)"
stop_daemon
