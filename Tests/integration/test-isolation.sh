#!/usr/bin/env bash
# One disk never stalls another: while disk x is suspended with fio's writes held on it
# (libaio, 2 jobs x iodepth 128), direct reads of disk y, fio on y and `ls -l MOUNT` go on;
# after resume, every held write lands (fio --verify over x). The same with the writes held
# one level down (data stacked over a suspended disk low) and biosets of 4, so that data's
# clones run out: its bios wait on the pool, not its threads. Each step is bounded, so a
# daemon that lets held I/O take every worker (or the kernel's background slots) fails here
# by timeout instead of hanging.
source "$(dirname "$0")/functions.sh"

MiB=$((1024 * 1024))
X=$(make_image x.img 64M)
Y=$(make_image y.img 64M)
make_pattern "$WORK/py" $((4 * MiB)) 41
start_daemon --queue-depth 64
udm_ok create x --table "0 131072 linear $X 0"
udm_ok create y --table "0 131072 linear $Y 0"
write_at "$WORK/py" 0 "$(disk_file y)" 0 $((4 * MiB)) direct || fail "writing y's pattern"

log "suspend x; fio's writes to x are held"
udm_ok suspend x
fio --name=held --filename="$(disk_file x)" --rw=randwrite --bs=4k --size=16M --offset_increment=16M --direct=1 \
    --ioengine=libaio --iodepth=128 --numjobs=2 --verify=crc32c --do_verify=1 --verify_state_save=0 \
    --randrepeat=1 --group_reporting >"$WORK/fio-x.out" 2>&1 &
FX=$!
track_pid "$FX"
sleep 2
pid_alive "$FX" || fail "fio on x finished while x was suspended: $(tail -n 5 "$WORK/fio-x.out")"

log "x holds 64 requests (its queue depth); the rest wait in the daemon, not in a worker"
udm info x >"$WORK/info.out" || fail "udm info x failed while x was suspended"
grep -Eq '^Queue depth: +64 \(64 in flight, [1-9][0-9]* waiting\)$' "$WORK/info.out" ||
    fail "udm info x: $(grep 'Queue depth' "$WORK/info.out")"

log "direct reads of y go on"
timeout 20 dd if="$(disk_file y)" of="$WORK/y.out" bs=4k count=256 iflag=direct status=none ||
    fail "dd from y stalled or failed while x was suspended"
expect_same "$WORK/y.out" 0 "$WORK/py" 0 $((256 * 4096)) "y read while x is suspended"

log "fio randread (libaio, iodepth 8) on y goes on"
timeout 30 fio --name=y --filename="$(disk_file y)" --rw=randread --bs=4k --size=4M --direct=1 \
    --ioengine=libaio --iodepth=8 --number_ios=2000 >"$WORK/fio-y.out" 2>&1 ||
    fail "fio on y stalled or failed while x was suspended: $(tail -n 5 "$WORK/fio-y.out")"

log "the mount's directory and the control plane answer"
timeout 10 ls -l "$MNT" >"$WORK/ls.out" || fail "ls -l MOUNT stalled while x was suspended"
grep -q ' y$' "$WORK/ls.out" || fail "ls -l MOUNT does not list y: $(cat "$WORK/ls.out")"
udm_ok ls
pid_alive "$FX" || fail "fio on x finished while x was suspended: $(tail -n 5 "$WORK/fio-x.out")"

log "resume x: the held writes land and verify"
udm_ok resume x
wait_gone "$FX" 120 || fail "fio on x still running 120 s after resume"
rc=0
wait "$FX" || rc=$?
((rc == 0)) || fail "fio --verify on x failed (status $rc): $(tail -n 20 "$WORK/fio-x.out")"
grep -q "err= 0" "$WORK/fio-x.out" || fail "fio on x reported errors: $(tail -n 20 "$WORK/fio-x.out")"
cmp -s <(read_at "$(disk_file y)" 0 $((4 * MiB))) "$WORK/py" || fail "y changed"
stop_daemon

log "stacked: data over a suspended disk low, biosets of 4"
start_daemon --bioset-size 4
L=$(make_image low.img 64M)
udm_ok create low --table "0 131072 linear $L 0"
udm_ok create data --table "0 131072 linear $(disk_file low) 0"
udm_ok suspend low
fio --name=held --filename="$(disk_file data)" --rw=randwrite --bs=64k --size=16M --offset_increment=16M --direct=1 \
    --ioengine=libaio --iodepth=64 --numjobs=2 --verify=crc32c --do_verify=1 --verify_state_save=0 \
    --randrepeat=1 --group_reporting >"$WORK/fio-data.out" 2>&1 &
FD=$!
track_pid "$FD"
sleep 2
pid_alive "$FD" || fail "fio on data finished while low was suspended: $(tail -n 5 "$WORK/fio-data.out")"
timeout 20 dd if="$(disk_file y)" of="$WORK/y.out" bs=4k count=256 iflag=direct status=none ||
    fail "dd from y stalled or failed while data's I/O was held under it"
expect_same "$WORK/y.out" 0 "$WORK/py" 0 $((256 * 4096)) "y read while data's I/O is held"
timeout 30 fio --name=y --filename="$(disk_file y)" --rw=randread --bs=4k --size=4M --direct=1 \
    --ioengine=libaio --iodepth=8 --number_ios=2000 >"$WORK/fio-y2.out" 2>&1 ||
    fail "fio on y stalled or failed while data's I/O was held: $(tail -n 5 "$WORK/fio-y2.out")"
udm_ok resume low
wait_gone "$FD" 120 || fail "fio on data still running 120 s after low was resumed"
rc=0
wait "$FD" || rc=$?
((rc == 0)) || fail "fio --verify on data failed (status $rc): $(tail -n 20 "$WORK/fio-data.out")"
stop_daemon
