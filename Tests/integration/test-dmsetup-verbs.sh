#!/usr/bin/env bash
# udm as dmsetup: the first dmsetup call starts the daemon; dmsetup's verbs print what the
# kernel's dmsetup prints (Tests/oracle/dmsetup-formats.sh run on both, compared line by line
# after device numbers are normalised); /dev/mapper/NAME is a block device whose data lands in
# the image; dm-error fails I/O; device arguments as major:minor and as another disk's block
# device (stacked in the daemon); bad input is one line and changes nothing.
source "$(dirname "$0")/functions.sh"

MAPPER=$TESTDIR/mapper
BIN=$TESTDIR/bin
mkdir -p "$BIN"
udm_ok install-dmsetup "$BIN"
[[ $(readlink "$BIN/dmsetup") == "$(readlink -f "$UDM_BIN")" ]] || fail "install-dmsetup: $BIN/dmsetup does not link to udm"
export PATH=$BIN:$PATH
export UDM_DMSETUP_DAEMON_ARGS="--mount $MNT --state-dir $STATE --mapper-dir $MAPPER"
dms() { timeout -k 5 60 dmsetup "$@"; }

# expect_dms_error OUT WORDS...: dmsetup must fail with one line on stderr, left in OUT.
expect_dms_error() {
    local out=$1 rc=0 n
    shift
    dms "$@" >"$WORK/dms.stdout" 2>"$out" || rc=$?
    ((rc != 0)) || fail "dmsetup $* succeeded"
    ((rc != 124 && rc != 137)) || fail "dmsetup $* timed out"
    n=$(grep -c '' "$out" || true)
    [[ $n == 1 ]] || fail "dmsetup $* printed $n lines on stderr, expected one: $(cat "$out")"
}

log "a create whose table file is missing fails before any daemon is started"
expect_dms_error "$WORK/nofile.err" create early "$WORK/no-such-table"
grep -q "no-such-table" "$WORK/nofile.err" || fail "the error does not name the table file: $(cat "$WORK/nofile.err")"
[[ -z $(pgrep -f -- "--socket $SOCK") && ! -e $SOCK ]] || fail "dmsetup create with a missing table file started a daemon"

log "the first dmsetup call starts the daemon"
[[ $(dms ls) == "No devices found" ]] || fail "dmsetup ls on a fresh daemon"
DAEMON_PID=$(pgrep -f -- "--socket $SOCK" | head -n 1)
[[ -n $DAEMON_PID ]] || fail "dmsetup ls did not start a daemon on $SOCK"
DAEMON_PIDS+=("$DAEMON_PID")
fuse_mount_live || fail "the daemon dmsetup started does not serve $MNT"

A=$(make_image a.img 16M)
B=$(make_image b.img 16M)
fill_image "$B" 7
LA=$(attach_loop "$A")
LB=$(attach_loop "$B")

log "dmsetup's text against the kernel's (Tests/oracle/dmsetup-formats.kernel)"
normalise() { # DEV_A DEV_B MAPPER_DIR: device numbers, names and paths made comparable
    sed -E -e "s#$1#DEV_A#g" -e "s#$2#DEV_B#g" -e "s#$3#MAPPER#g" -e 's/[0-9]+:[0-9]+/M:m/g' \
        -e 's/^(Major, minor: +)[0-9]+, [0-9]+$/\1M, m/' -e 's/^([a-z]{2} {15})[ 0-9]{3} [ 0-9]{3} ([L-][I-][s-][rw])/\1  M   m \2/' \
        -e 's/ (dm-|loop)[0-9]+( |$)/ BLKDEV\2/' -e 's/[[:space:]]+$//' -e '/^Command failed\.$/d'
}
(cd "$WORK" && sh "$REPO_ROOT/Tests/oracle/dmsetup-formats.sh" "$LA" "$LB" "$MAPPER") >"$WORK/formats.udm"
normalise /dev/vda /dev/vdb /dev/mapper <"$REPO_ROOT/Tests/oracle/dmsetup-formats.kernel" >"$WORK/formats.want"
normalise "$LA" "$LB" "$MAPPER" <"$WORK/formats.udm" >"$WORK/formats.got"
diff -u "$WORK/formats.want" "$WORK/formats.got" >"$WORK/formats.diff" ||
    fail "dmsetup output differs from the kernel's: $(cat "$WORK/formats.diff")"
[[ -z $(ls -A "$MAPPER") ]] || fail "remove_all left nodes in $MAPPER: $(ls "$MAPPER")"
losetup -n -O BACK-FILE | grep -q "^$MNT/" && fail "remove_all left loop devices over udm disks: $(losetup -a)"

log "/dev/mapper/NAME is a block device over the disk: data lands in the image"
dms create li --table "0 8192 linear $LB 2048"
[[ -b $MAPPER/li ]] || fail "$MAPPER/li is not a block device"
[[ $(blockdev --getsz "$MAPPER/li") == 8192 ]] || fail "blockdev --getsz $MAPPER/li: $(blockdev --getsz "$MAPPER/li")"
[[ $(cat "/sys/block/$(basename "$(losetup -n -O NAME -j "$MNT/li")")/loop/dio") == 1 ]] ||
    fail "the loop device under $MAPPER/li does not use direct I/O"
make_pattern "$WORK/p" 65536 3
dd if="$WORK/p" of="$MAPPER/li" bs=64k seek=3 oflag=direct conv=fsync status=none || fail "write to $MAPPER/li"
expect_same "$B" $((2048 * 512 + 3 * 65536)) "$WORK/p" 0 65536 "written through $MAPPER/li"
read_at "$MAPPER/li" 0 65536 direct >"$WORK/r"
expect_same "$WORK/r" 0 "$B" $((2048 * 512)) 65536 "read through $MAPPER/li"

log "dm-error: I/O on the block device fails with EIO"
dms create er --table "0 4096 error"
! dd if="$MAPPER/er" of=/dev/null bs=4k count=1 iflag=direct status=none 2>"$WORK/dd.err" || fail "a read from dm-error succeeded"
grep -q 'Input/output error' "$WORK/dd.err" || fail "read from dm-error: $(cat "$WORK/dd.err")"
! dd if="$WORK/p" of="$MAPPER/er" bs=4k count=1 oflag=direct status=none 2>"$WORK/dd.err" || fail "a write to dm-error succeeded"
grep -q 'Input/output error' "$WORK/dd.err" || fail "write to dm-error: $(cat "$WORK/dd.err")"

log "major:minor names a block device; a table prints devices as major:minor"
numbers=$(lsblk -dn -o MAJ:MIN "$LB" | tr -d ' ')
dms create mm --table "0 8192 linear $numbers 2048"
[[ $(dms table mm) == "0 8192 linear $numbers 2048" ]] || fail "dmsetup table mm: $(dms table mm)"
read_at "$MAPPER/mm" $((3 * 65536)) 65536 direct >"$WORK/r"
expect_same "$WORK/r" 0 "$WORK/p" 0 65536 "read through a major:minor table"

log "another dmsetup disk's block device as a device argument: stacked in the daemon"
dms create up --table "0 4096 linear $MAPPER/li 4096"
li_numbers=$(dms info -c --noheadings -o major,minor li)
[[ $(dms table up) == "0 4096 linear ${li_numbers} 4096" ]] || fail "dmsetup table up: $(dms table up), li is $li_numbers"
read_at "$MAPPER/up" 0 4096 direct >"$WORK/r"
expect_same "$WORK/r" 0 "$B" $(((2048 + 4096) * 512)) 4096 "read through a disk stacked on li's block device"
expect_dms_error "$WORK/e" remove li
grep -q "disk 'li' is in use by up" "$WORK/e" || fail "remove of a lower disk: $(cat "$WORK/e")"

log "bad input: one line naming the problem, nothing changed"
table_before=$(dms table)
expect_dms_error "$WORK/e" --bogus ls
grep -qx "dmsetup: unrecognized option '--bogus'" "$WORK/e" || fail "unknown long option: $(cat "$WORK/e")"
expect_dms_error "$WORK/e" info -Z li
grep -qx "dmsetup: invalid option -- 'Z'" "$WORK/e" || fail "unknown short option: $(cat "$WORK/e")"
expect_dms_error "$WORK/e" table --inactive li
grep -q "'--inactive' is not supported" "$WORK/e" || fail "unsupported option: $(cat "$WORK/e")"
expect_dms_error "$WORK/e" frobnicate
grep -q "unknown command 'frobnicate'" "$WORK/e" || fail "unknown command: $(cat "$WORK/e")"
expect_dms_error "$WORK/e" create bad --table "0 8 linear 4095:4095 0"
grep -q "'4095:4095' is not a block device" "$WORK/e" || fail "major:minor of no device: $(cat "$WORK/e")"
expect_dms_error "$WORK/e" load li --table "0 8192 linear $MAPPER/li 0"
grep -q "would make a cycle" "$WORK/e" || fail "a disk over its own block device: $(cat "$WORK/e")"
partial=$(losetup --direct-io=on --offset 4096 --find --show "$MNT/li")
echo "$partial" >>"$LOOP_LIST"
expect_dms_error "$WORK/e" create bad --table "0 8 linear $partial 0"
grep -q "loop device over part of udm disk li" "$WORK/e" || fail "a loop over part of a udm disk: $(cat "$WORK/e")"
detach_loop "$partial"
expect_dms_error "$WORK/e" info -c -o name,bogus
grep -q "unrecognised field 'bogus'" "$WORK/e" || fail "unknown field: $(cat "$WORK/e")"
[[ $(dms table) == "$table_before" ]] || fail "bad input changed the tables: $(dms table)"
[[ ! -e $MAPPER/bad ]] || fail "a refused create left $MAPPER/bad"

log "remove detaches the loop device and deletes the node"
for name in up mm er li; do dms remove "$name"; done
[[ -z $(ls -A "$MAPPER") ]] || fail "nodes left in $MAPPER: $(ls "$MAPPER")"
losetup -n -O BACK-FILE | grep -q "^$MNT/" && fail "loop devices left over udm disks: $(losetup -a)"
[[ $(dms ls) == "No devices found" ]] || fail "disks left: $(dms ls)"
[[ $("$UDM_BIN" dmsetup version | head -n 1) == "Library version:"* ]] || fail "udm dmsetup version"
udm_ok dmsetup udevcomplete_all
echo "PASS: $TEST_NAME"
