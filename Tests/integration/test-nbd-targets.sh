#!/usr/bin/env bash
# flakey and delay stack over NBD like over a file: a delay disk over one export and a flakey
# disk (drop_writes) over another, both nbdkit's file plugin. Writes through delay land in
# its image; writes through flakey are acknowledged and dropped (the image keeps its bytes),
# and a reload to linear over the same URI writes through again.
source "$(dirname "$0")/functions.sh"

MiB=$((1024 * 1024))
SECTORS=$((16 * 2048))
A=$(make_image a.img 16M)
B=$(make_image b.img 16M)
fill_image "$B" 9
cp "$B" "$WORK/b.before"
start_nbdkit a "$TESTDIR/a.sock" file "$A"
start_nbdkit b "$TESTDIR/b.sock" file "$B"
URI_A="nbd+unix:///?socket=$TESTDIR/a.sock"
URI_B="nbd+unix:///?socket=$TESTDIR/b.sock"

start_daemon
log "delay over NBD: reads and writes wait, then land"
udm_ok create d --table "0 $SECTORS delay $URI_A 0 20 $URI_A 0 50"
make_pattern "$WORK/p" $((2 * MiB)) 5
write_at "$WORK/p" 0 "$(disk_file d)" $MiB $((2 * MiB)) direct
expect_same "$A" $MiB "$WORK/p" 0 $((2 * MiB)) "delayed write in image a"
read_at "$(disk_file d)" $MiB $((2 * MiB)) direct | cmp -s - "$WORK/p" || fail "delayed read differs"

log "flakey over NBD: drop_writes acknowledges and drops; linear over the same URI writes again"
udm_ok create f --table "0 $SECTORS flakey $URI_B 0 0 100000 1 drop_writes"
write_at "$WORK/p" 0 "$(disk_file f)" $MiB $((2 * MiB)) direct
cmp -s "$B" "$WORK/b.before" || fail "a write through drop_writes reached image b"
udm_ok load f --table "0 $SECTORS linear $URI_B 0"
udm_ok resume f
write_at "$WORK/p" 0 "$(disk_file f)" $MiB $((2 * MiB)) direct
expect_same "$B" $MiB "$WORK/p" 0 $((2 * MiB)) "write through linear in image b"
udm_ok remove d
udm_ok remove f
expect_no_nbd_clients a
expect_no_nbd_clients b
stop_daemon
