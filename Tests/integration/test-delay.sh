#!/usr/bin/env bash
# delay over an image: a read through a 200 ms delay disk takes at least 200 ms, and 16 reads
# at once take about 200 ms in all (held on a timer, not a sleeping thread each); a held write
# shows in the status, has not reached the image, and a suspend sends it down at once.
source "$(dirname "$0")/functions.sh"

MiB=$((1024 * 1024))
A=$(make_image a.img 8M)
fill_image "$A" 41
start_daemon

ms_now() { echo $(($(date +%s%N) / 1000000)); }

log "one read through a 200 ms delay takes at least 200 ms"
TABLE="0 8192 delay $A 2048 200"
udm_ok create d --table "$TABLE"
expect_table d "$TABLE"
D=$(disk_file d)
t0=$(ms_now)
read_at "$D" 4096 4096 direct >"$WORK/r" || fail "the delayed read failed"
t1=$(ms_now)
expect_same "$WORK/r" 0 "$A" $((2048 * 512 + 4096)) 4096 "delayed read"
((t1 - t0 >= 200)) || fail "the delayed read took $((t1 - t0)) ms, less than its 200 ms delay"
log "one read: $((t1 - t0)) ms"

log "16 concurrent reads take about 200 ms in all, not 16 x 200 ms"
pids=()
t0=$(ms_now)
for i in $(seq 0 15); do
    read_at "$D" $((i * 65536)) 65536 direct >"$WORK/r.$i" &
    pids+=($!)
done
for i in $(seq 0 15); do
    wait "${pids[$i]}" || fail "concurrent read $i failed"
done
t1=$(ms_now)
for i in $(seq 0 15); do
    expect_same "$WORK/r.$i" 0 "$A" $((2048 * 512 + i * 65536)) 65536 "concurrent read $i"
done
log "16 reads: $((t1 - t0)) ms"
((t1 - t0 >= 200)) || fail "16 delayed reads took $((t1 - t0)) ms, less than the 200 ms delay"
((t1 - t0 < 1600)) || fail "16 concurrent reads took $((t1 - t0)) ms: they were delayed one after another"

log "a held write shows in the status and has not reached the image; suspend sends it down"
TABLE="0 8192 delay $A 2048 0 $A 2048 60000"
udm_ok load d --table "$TABLE"
udm_ok resume d
expect_table d "$TABLE"
[[ $(udm status d) == "0 8192 delay 0 0 0" ]] || fail "status of an idle delay disk: $(udm status d)"
make_pattern "$WORK/p" 65536 42
sha_before=$(sha "$A")
dd if="$WORK/p" of="$D" bs=65536 count=1 oflag=direct conv=notrunc status=none 2>"$WORK/w.err" &
W=$!
track_pid "$W"
for ((i = 0; i < 100; i++)); do
    [[ $(udm status d) == "0 8192 delay 0 1 0" ]] && break
    sleep 0.1
done
[[ $(udm status d) == "0 8192 delay 0 1 0" ]] || fail "the write is not shown as held: $(udm status d)"
pid_alive "$W" || fail "the write finished while it should be held"
[[ $(sha "$A") == "$sha_before" ]] || fail "the held write reached the image"
read_at "$D" 0 4096 direct >"$WORK/r" || fail "a read (delay 0) failed while a write is held"
udm_ok suspend d
wait_gone "$W" 10 || fail "the held write did not finish after suspend"
wait "$W" || fail "the held write failed: $(cat "$WORK/w.err")"
expect_same "$A" $((2048 * 512)) "$WORK/p" 0 65536 "the write, after suspend sent it down"
[[ $(udm status d) == "0 8192 delay 0 0 0" ]] || fail "status after suspend: $(udm status d)"
udm_ok resume d

log "bad delays are refused naming the argument; the old table stays"
expect_udm_error "$WORK/err" load d --table "0 8192 delay $A 2048 10 $A 2048"
grep -q "requires exactly 3, 6 or 9 arguments" "$WORK/err" || fail "unexpected error: $(cat "$WORK/err")"
expect_udm_error "$WORK/err" load d --table "0 8192 delay $A 2048 soon"
grep -q "argument 3 of delay: invalid read delay 'soon'" "$WORK/err" || fail "unexpected error: $(cat "$WORK/err")"
expect_table d "$TABLE"
# Shutdown flushes every disk, and this one would hold that flush for 60 s.
udm_ok load d --table "0 8192 delay $A 2048 0"
udm_ok resume d
stop_daemon
