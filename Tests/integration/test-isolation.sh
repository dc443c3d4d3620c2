#!/usr/bin/env bash
# One disk never stalls another: while disk x is suspended with fio's writes held on it
# (libaio, 2 jobs x iodepth 128), direct reads of disk y, fio on y and `ls -l MOUNT` go on;
# after resume, every held write lands (fio --verify over x). The same with the writes held
# one level down (data stacked over a suspended disk low) and biosets of 4, so that data's
# clones run out: its bios wait on the pool, not its threads; and with 24 fsyncs on a striped
# disk over two suspended disks, each flush needing a set of 2 clones from an empty pool: the
# sets are waited for on the striped disk's own thread. And with 1 MiB writes held on x (more
# of them than there are warm 1 MiB buffers and workers together): their data waits in spare
# buffers, not in workers. Each step is bounded, so a
# daemon that lets held I/O take every worker (or the kernel's background slots) fails here
# by timeout instead of hanging.
source "$(dirname "$0")/functions.sh"

MiB=$((1024 * 1024))
X=$(make_image x.img 64M)
Y=$(make_image y.img 64M)
make_pattern "$WORK/py" $((4 * MiB)) 41

# start_held_fio DISK BS DEPTH: fio --verify writing DISK (2 jobs, libaio) in the background,
# which must still be running 2 s later (its writes are held); sets F
start_held_fio() {
    fio --name=held --filename="$(disk_file "$1")" --rw=randwrite --bs="$2" --size=16M --offset_increment=16M \
        --direct=1 --ioengine=libaio --iodepth="$3" --numjobs=2 --verify=crc32c --do_verify=1 \
        --verify_state_save=0 --randrepeat=1 --group_reporting >"$WORK/fio-$1.out" 2>&1 &
    F=$!
    track_pid "$F"
    sleep 2
    pid_alive "$F" || fail "fio on $1 finished while its I/O was held: $(tail -n 5 "$WORK/fio-$1.out")"
}

# expect_y_goes_on WHILE: direct reads of y (checked against its pattern) and fio on y finish
expect_y_goes_on() {
    timeout 20 dd if="$(disk_file y)" of="$WORK/y.out" bs=4k count=256 iflag=direct status=none ||
        fail "dd from y stalled or failed while $1"
    expect_same "$WORK/y.out" 0 "$WORK/py" 0 $((256 * 4096)) "y read while $1"
    timeout 30 fio --name=y --filename="$(disk_file y)" --rw=randread --bs=4k --size=4M --direct=1 \
        --ioengine=libaio --iodepth=8 --number_ios=2000 >"$WORK/fio-y.out" 2>&1 ||
        fail "fio on y stalled or failed while $1: $(tail -n 5 "$WORK/fio-y.out")"
}

# expect_verified DISK: the held fio ends within 120 s and its verify passed
expect_verified() {
    wait_gone "$F" 120 || fail "fio on $1 still running 120 s after its I/O was let go"
    local rc=0
    wait "$F" || rc=$?
    ((rc == 0)) || fail "fio --verify on $1 failed (status $rc): $(tail -n 20 "$WORK/fio-$1.out")"
    grep -q "err= 0" "$WORK/fio-$1.out" || fail "fio on $1 reported errors: $(tail -n 20 "$WORK/fio-$1.out")"
}

start_daemon --queue-depth 64
udm_ok create x --table "0 131072 linear $X 0"
udm_ok create y --table "0 131072 linear $Y 0"
write_at "$WORK/py" 0 "$(disk_file y)" 0 $((4 * MiB)) direct || fail "writing y's pattern"

log "suspend x; fio's writes to x are held"
udm_ok suspend x
start_held_fio x 4k 128

log "x holds 64 requests (its queue depth); the rest wait in the daemon, not in a worker"
udm info x >"$WORK/info.out" || fail "udm info x failed while x was suspended"
grep -Eq '^Queue depth: +64 \(64 in flight, [1-9][0-9]* waiting\)$' "$WORK/info.out" ||
    fail "udm info x: $(grep 'Queue depth' "$WORK/info.out")"

log "reads and fio on y go on"
expect_y_goes_on "x was suspended"

log "the mount's directory and the control plane answer"
timeout 10 ls -l "$MNT" >"$WORK/ls.out" || fail "ls -l MOUNT stalled while x was suspended"
grep -q ' y$' "$WORK/ls.out" || fail "ls -l MOUNT does not list y: $(cat "$WORK/ls.out")"
udm_ok ls
pid_alive "$F" || fail "fio on x finished while x was suspended: $(tail -n 5 "$WORK/fio-x.out")"

log "resume x: the held writes land and verify"
udm_ok resume x
expect_verified x
cmp -s <(read_at "$(disk_file y)" 0 $((4 * MiB))) "$WORK/py" || fail "y changed"
stop_daemon

log "stacked: data over a suspended disk low, biosets of 4"
start_daemon --bioset-size 4
L=$(make_image low.img 64M)
udm_ok create low --table "0 131072 linear $L 0"
udm_ok create data --table "0 131072 linear $(disk_file low) 0"
udm_ok suspend low
start_held_fio data 64k 64
expect_y_goes_on "data's I/O was held under it"
udm_ok resume low
expect_verified data

log "striped over two suspended disks: 24 fsyncs wait for their clone sets, not in workers"
S0=$(make_image s0.img 32M)
S1=$(make_image s1.img 32M)
udm_ok create s0 --table "0 65536 linear $S0 0"
udm_ok create s1 --table "0 65536 linear $S1 0"
udm_ok create st --table "0 131072 striped 2 8 $(disk_file s0) 0 $(disk_file s1) 0"
udm_ok suspend s0
udm_ok suspend s1
start_held_fio st 4k 64
fsyncs=()
for i in $(seq 1 24); do
    python3 -c 'import os, sys; os.fsync(os.open(sys.argv[1], os.O_RDWR))' "$(disk_file st)" &
    fsyncs+=($!)
    track_pid "$!"
done
sleep 1
expect_y_goes_on "st's flushes waited for clones under it"
udm_ok resume s0
udm_ok resume s1
expect_verified st
for pid in "${fsyncs[@]}"; do
    wait_gone "$pid" 30 || fail "an fsync of st still waiting 30 s after s0 and s1 were resumed"
    wait "$pid" || fail "an fsync of st failed"
done

log "1 MiB writes held on big: 2 jobs x iodepth 64, more than the warm 1 MiB buffers and the workers"
B=$(make_image big.img 128M)
udm_ok create big --table "0 262144 linear $B 0"
udm_ok suspend big
fio --name=held --filename="$(disk_file big)" --rw=randwrite --bs=1M --size=64M --offset_increment=64M \
    --direct=1 --ioengine=libaio --iodepth=64 --numjobs=2 --verify=crc32c --do_verify=1 \
    --verify_state_save=0 --randrepeat=1 --group_reporting >"$WORK/fio-big.out" 2>&1 &
F=$!
track_pid "$F"
sleep 3
pid_alive "$F" || fail "fio on big finished while its I/O was held: $(tail -n 5 "$WORK/fio-big.out")"
expect_y_goes_on "big held 128 writes of 1 MiB"
timeout 10 ls -l "$MNT" >/dev/null || fail "ls -l MOUNT stalled while big held 1 MiB writes"
udm_ok resume big
expect_verified big
stop_daemon
