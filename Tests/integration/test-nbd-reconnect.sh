#!/usr/bin/env bash
# An NBD server that goes away and comes back loses nothing: during fio --verify on a linear
# disk over nbdkit (TCP, 127.0.0.1), the server is stopped (SIGSTOP) and continued, then
# stopped again until fio's writes are out at it, killed with them and restarted on the same
# port; fio sees no error, the image holds what the disk shows, and
# `udm info` counts the reconnects. A server that never comes back: with --nbd-timeout 3 the
# held read fails with EIO, the daemon answers meanwhile, later I/O fails at once, and once a
# server listens again the disk works again.
source "$(dirname "$0")/functions.sh"
command -v fio >/dev/null || fail "fio is not installed"

MiB=$((1024 * 1024))
SECTORS=$((64 * 2048))
BACKING=$(make_image backing.img 64M)
PORT=$(free_port)
URI="nbd://127.0.0.1:$PORT/"

start_nbdkit file "$PORT" file "$BACKING"
start_daemon
udm_ok create n --table "0 $SECTORS linear $URI 0"
D=$(disk_file n)

# link_state: the state word of the disk's NBD link in `udm info`.
link_state() {
    udm info n | awk '/^NBD link:/ { print $4 }'
}
# wait_link STATE: until `udm info` shows STATE (at most 30 s).
wait_link() {
    local i
    for ((i = 0; i < 300; i++)); do
        [[ $(link_state) == "$1" ]] && return 0
        sleep 0.1
    done
    fail "the link did not become $1: $(udm info n | grep '^NBD link:')"
}
[[ $(link_state) == up ]] || fail "a new disk's link is not up: $(udm info n)"

log "fio --verify while the server is stopped, continued, killed and restarted"
# Rate-limited so that it is still running through all of it (about 16 s).
(cd "$WORK" && exec fio --name=reconnect --filename="$D" --ioengine=libaio --iodepth=8 --direct=1 \
    --rw=randwrite --bsrange=4k-64k --size=16M --rate=2m,2m --verify=crc32c --do_verify=1 \
    --verify_fatal=1 --randrepeat=0 --verify_state_save=0 --output="$WORK/fio.out" >/dev/null 2>&1) &
FIO=$!
track_pid "$FIO"
sleep 1
pid_alive "$FIO" || fail "fio ended before the server was stopped: $(tail -n 20 "$WORK/fio.out")"
kill -STOP "$(nbd_pid file)"
sleep 2
udm ls >/dev/null || fail "the daemon does not answer while the server is stopped"
kill -CONT "$(nbd_pid file)"
sleep 1
pid_alive "$FIO" || fail "fio ended before the server was killed: $(tail -n 20 "$WORK/fio.out")"
kill -STOP "$(nbd_pid file)"
for ((i = 0; i < 300; i++)); do
    udm info n | grep -Eq '^NBD link: .*, [1-9][0-9]* in flight' && break
    sleep 0.1
done
udm info n | grep -Eq '^NBD link: .*, [1-9][0-9]* in flight' ||
    fail "no I/O out at the stopped server: $(udm info n | grep '^NBD link:')"
stop_nbdkit file
wait_link reconnecting
sleep 1
start_nbdkit file "$PORT" file "$BACKING"
wait_link up
pid_alive "$FIO" || fail "fio ended before the server came back: $(tail -n 20 "$WORK/fio.out")"
rc=0
wait "$FIO" || rc=$?
((rc == 0)) || { tail -n 30 "$WORK/fio.out" >&2; fail "fio failed (exit $rc)"; }
grep -q 'err= *0' "$WORK/fio.out" || { cat "$WORK/fio.out" >&2; fail "fio reported errors"; }
udm info n | grep -Eq '^NBD link: .* up \([1-4] connections?, [1-9][0-9]* reconnects?' ||
    fail "udm info does not count the reconnects: $(udm info n | grep '^NBD link:')"
read_at "$D" 0 $((SECTORS * 512)) direct >"$WORK/disk" || fail "read of $D failed"
expect_same "$WORK/disk" 0 "$BACKING" 0 $((SECTORS * 512)) "disk vs image after the reconnects"

log "a server that never comes back: EIO after --nbd-timeout, the daemon answers meanwhile"
stop_daemon
start_daemon --nbd-timeout 3
[[ $(link_state) == up ]] || fail "the restored disk's link is not up: $(udm info n)"
stop_nbdkit file
(exec dd if="$D" of=/dev/null bs=4k count=1 skip=100 iflag=direct status=none 2>"$WORK/dd.err") &
DD=$!
track_pid "$DD"
wait_link reconnecting
udm ls >/dev/null || fail "the daemon does not answer while the read is held"
rc=0
wait "$DD" || rc=$?
((rc != 0)) || fail "the read succeeded with no server"
grep -q "Input/output error" "$WORK/dd.err" || fail "the held read did not fail with EIO: $(cat "$WORK/dd.err")"
[[ $(link_state) == down ]] || fail "the link is not down after the timeout: $(udm info n | grep '^NBD link:')"
read_at "$D" 0 4096 direct >/dev/null 2>&1 && fail "a read succeeded while the link is down"

log "the server is back: the disk works again"
start_nbdkit file "$PORT" file "$BACKING"
wait_link up
read_at "$D" 0 $((SECTORS * 512)) direct >"$WORK/disk" || fail "read of $D after the server came back failed"
expect_same "$WORK/disk" 0 "$BACKING" 0 $((SECTORS * 512)) "disk vs image at the end"
udm_ok remove n
stop_daemon
