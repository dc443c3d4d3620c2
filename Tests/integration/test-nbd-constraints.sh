#!/usr/bin/env bash
# What an NBD server advertises shapes the disk: multi-conn gets one connection per CPU (at
# most four), a server without it one (`udm info` says which); a server whose maximum request is 64 KiB (and that
# fails anything larger) still takes 1 MiB writes and reads, cut by udm, byte-exact; a server
# whose minimum block is 4096 bytes is refused with one line, nothing created.
source "$(dirname "$0")/functions.sh"
command -v fio >/dev/null || fail "fio is not installed"

MiB=$((1024 * 1024))
SECTORS=$((32 * 2048))
MULTI=$TESTDIR/multi.sock SINGLE=$TESTDIR/single.sock SMALL=$TESTDIR/small.sock BIG=$TESTDIR/big.sock
IMAGE=$(make_image small.img 32M)
start_nbdkit multi "$MULTI" memory 32M
start_nbdkit single "$SINGLE" --filter=multi-conn memory 32M multi-conn-mode=disable
start_nbdkit small "$SMALL" --filter=blocksize-policy file "$IMAGE" blocksize-maximum=65536 blocksize-error-policy=error
start_nbdkit big "$BIG" --filter=blocksize-policy memory 32M blocksize-minimum=4096

start_daemon
log "multi-conn: one connection per CPU, at most four; without it, one"
CPUS=$(getconf _NPROCESSORS_ONLN)
WANT=$((CPUS < 4 ? CPUS : 4))
udm_ok create multi --table "0 $SECTORS linear nbd+unix:///?socket=$MULTI 0"
udm_ok create single --table "0 $SECTORS linear nbd+unix:///?socket=$SINGLE 0"
udm info multi | grep -Eq "^NBD link: .* up \($WANT connections?, 0 reconnects" || fail "multi ($CPUS CPUs): $(udm info multi | grep '^NBD link:')"
udm info single | grep -q "^NBD link: .* up (1 connection, 0 reconnects" || fail "single: $(udm info single | grep '^NBD link:')"
udm info --json single | grep -q '"nbd":\[{"connections":1,' || fail "single, JSON: $(udm info --json single)"
udm status --json single | grep -q '"nbd":\[{"connections":1,"inFlight":0,"reconnects":0,"state":"up"' ||
    fail "single, status JSON: $(udm status --json single)"
udm table --json single | grep -q '"nbd"' && fail "table --json reports links: $(udm table --json single)"
for disk in multi single; do
    make_pattern "$WORK/p" $((8 * MiB)) 6
    write_at "$WORK/p" 0 "$(disk_file $disk)" $MiB $((8 * MiB)) direct
    read_at "$(disk_file $disk)" $MiB $((8 * MiB)) direct | cmp -s - "$WORK/p" || fail "$disk: the pattern does not read back"
done

log "a 64 KiB maximum request: 1 MiB I/O is cut to fit, byte-exact"
udm_ok create small --table "0 $SECTORS linear nbd+unix:///?socket=$SMALL 0"
D=$(disk_file small)
make_pattern "$WORK/p" $((4 * MiB)) 7
write_at "$WORK/p" 0 "$D" $((3 * MiB)) $((4 * MiB)) direct
expect_same "$IMAGE" $((3 * MiB)) "$WORK/p" 0 $((4 * MiB)) "pattern in the image"
(cd "$WORK" && fio --name=big --filename="$D" --ioengine=libaio --iodepth=4 --direct=1 --rw=randwrite \
    --bs=1M --size=16M --offset=8M --verify=crc32c --do_verify=1 --verify_fatal=1 --randrepeat=0 \
    --verify_state_save=0 --output="$WORK/fio.out" >/dev/null 2>&1) || { tail -n 30 "$WORK/fio.out" >&2; fail "fio failed"; }
grep -q 'err= *0' "$WORK/fio.out" || { cat "$WORK/fio.out" >&2; fail "fio reported errors"; }
grep -q "rejected" "$TESTDIR/nbd.small.log" && fail "the server rejected requests: $(grep rejected "$TESTDIR/nbd.small.log" | head -n 3)"
read_at "$D" 0 $((SECTORS * 512)) direct | cmp -s - "$IMAGE" || fail "the disk and the image differ"

log "a 4096-byte minimum block is refused"
expect_udm_error "$WORK/err" create big --table "0 $SECTORS linear nbd+unix:///?socket=$BIG 0"
grep -qF "nbd+unix:///?socket=$BIG: the export needs requests aligned to 4096 bytes" "$WORK/err" || fail "refusal: $(cat "$WORK/err")"
disk_listed big && fail "disk 'big' was created"
for disk in multi single small; do udm_ok remove $disk; done
stop_daemon
