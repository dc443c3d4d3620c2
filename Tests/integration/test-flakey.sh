#!/usr/bin/env bash
# flakey over an image: drop_writes acknowledges writes and leaves the image unchanged;
# error_reads fails reads with EIO and lets writes land; with no features everything fails
# while down; an up/down cycle switches between working and failing; a bad feature is refused
# and leaves the old table live. Reloading (load + resume) is how a disk changes mode.
source "$(dirname "$0")/functions.sh"

MiB=$((1024 * 1024))
A=$(make_image a.img 8M)
fill_image "$A" 31
SECTORS=8192               # the disk: A from 1 MiB on, 4 MiB
OFF=2048
start_daemon
udm_ok create f --table "0 $SECTORS linear $A $OFF"
D=$(disk_file f)
make_pattern "$WORK/p" "$MiB" 32

# reload TABLE: load it and make it live, as a test switching modes would
reload() {
    udm_ok load f --table "$1"
    udm_ok resume f
    expect_table f "$1"
}

# direct_write OFF LEN: write LEN bytes of the pattern at disk byte OFF; status as dd's
direct_write() {
    dd if="$WORK/p" of="$D" bs="$2" count=1 oflag=seek_bytes,direct seek="$1" conv=notrunc,fsync \
        status=none 2>"$WORK/dd.err"
}

# direct_read OFF LEN: LEN bytes at disk byte OFF into WORK/r; status as dd's
direct_read() {
    dd if="$D" of="$WORK/r" bs="$2" count=1 iflag=skip_bytes,direct skip="$1" status=none 2>"$WORK/dd.err"
}

expect_eio() { # WHAT
    grep -q 'Input/output error' "$WORK/dd.err" || fail "$1: expected Input/output error, got: $(cat "$WORK/dd.err")"
}

log "drop_writes (up 0: down at once): writes are acknowledged, the image does not change"
reload "0 $SECTORS flakey $A $OFF 0 3600 1 drop_writes"
sha_before=$(sha "$A")
direct_write 0 65536 || fail "a write to a drop_writes disk failed: $(cat "$WORK/dd.err")"
direct_write $((3 * MiB)) "$MiB" || fail "a 1 MiB write to a drop_writes disk failed: $(cat "$WORK/dd.err")"
[[ $(sha "$A") == "$sha_before" ]] || fail "the image changed under drop_writes"
direct_read 0 65536 || fail "a read from a drop_writes disk failed: $(cat "$WORK/dd.err")"
expect_same "$WORK/r" 0 "$A" $((OFF * 512)) 65536 "read under drop_writes returns the image's old bytes"

log "error_reads: reads fail with EIO, writes land"
reload "0 $SECTORS flakey $A $OFF 0 3600 1 error_reads"
! direct_read 4096 4096 || fail "a read from an error_reads disk succeeded"
expect_eio "read under error_reads"
direct_write 8192 8192 || fail "a write to an error_reads disk failed: $(cat "$WORK/dd.err")"
expect_same "$A" $((OFF * 512 + 8192)) "$WORK/p" 0 8192 "write under error_reads, in the image"

log "no features: reads and writes fail while down"
reload "0 $SECTORS flakey $A $OFF 0 3600 0"
sha_before=$(sha "$A")
! direct_read 0 4096 || fail "a read from a down flakey disk succeeded"
expect_eio "read while down"
! direct_write 0 4096 || fail "a write to a down flakey disk succeeded"
[[ $(sha "$A") == "$sha_before" ]] || fail "the image changed after failed writes"

log "down 0 (always up): everything passes"
reload "0 $SECTORS flakey $A $OFF 3600 0 0"
direct_write 16384 4096 || fail "a write while up failed: $(cat "$WORK/dd.err")"
expect_same "$A" $((OFF * 512 + 16384)) "$WORK/p" 0 4096 "write while up"
direct_read 16384 4096 || fail "a read while up failed: $(cat "$WORK/dd.err")"
expect_same "$WORK/r" 0 "$WORK/p" 0 4096 "read while up"

log "up 1 s, down 1 s: reads switch between working and EIO"
reload "0 $SECTORS flakey $A $OFF 1 1 0"
ok=0 eio=0
for ((i = 0; i < 200 && (ok < 3 || eio < 3); i++)); do
    if direct_read 0 4096; then
        ok=$((ok + 1))
        expect_same "$WORK/r" 0 "$A" $((OFF * 512)) 4096 "read while up"
    else
        expect_eio "read while down"
        eio=$((eio + 1))
    fi
    sleep 0.1
done
((ok >= 3 && eio >= 3)) || fail "in $i reads saw $ok successes and $eio EIOs; expected both to recur"

log "a bad feature is refused with one line naming it; the old table stays live"
expect_udm_error "$WORK/err" load f --table "0 $SECTORS flakey $A $OFF 0 1 1 drop_everything"
grep -q "argument 6 of flakey: unrecognised flakey feature 'drop_everything'" "$WORK/err" ||
    fail "unexpected error for a bad feature: $(cat "$WORK/err")"
expect_udm_error "$WORK/err" load f --table "0 $SECTORS flakey $A $OFF 0 0"
grep -q "total (up + down) interval is zero" "$WORK/err" || fail "unexpected error for zero intervals: $(cat "$WORK/err")"
expect_table f "0 $SECTORS flakey $A $OFF 1 1 0"
udm info f | grep -q 'Tables present: *LIVE$' || fail "a refused table left something loaded: $(udm info f)"
grep -q "^0 $SECTORS flakey $" <<<"$(udm status f)" || fail "udm status f: $(udm status f)"

stop_daemon
