#!/usr/bin/env bash
# Disks created through dmsetup keep their block devices across daemon restarts: `udm shutdown`
# is refused while one is mounted, detaches them otherwise; a restarted daemon (after a clean
# shutdown, and after kill -9, releasing the dead mount's loop devices) attaches a loop device
# and makes /dev/mapper/NAME again, before the disks stacked on that node are restored; the
# file system on it mounts with its data.
source "$(dirname "$0")/functions.sh"

MAPPER=$TESTDIR/mapper
BIN=$TESTDIR/bin
mkdir -p "$BIN" "$WORK/fs"
udm_ok install-dmsetup "$BIN"
export PATH=$BIN:$PATH
dms() { timeout -k 5 60 dmsetup "$@"; }
start_daemon --mapper-dir "$MAPPER"

A=$(make_image a.img 64M)
dms create base --table "0 131072 linear $A 0"
dms create top --table "0 65536 linear $MAPPER/base 65536"
mkfs.ext4 -q "$MAPPER/top" || fail "mkfs.ext4 $MAPPER/top"
mount "$MAPPER/top" "$WORK/fs" || fail "mount $MAPPER/top"
make_pattern "$WORK/p" $((4 * 1024 * 1024)) 5
cp "$WORK/p" "$WORK/fs/data"
sync -f "$WORK/fs"

# udm_loops: loop devices over this daemon's disk files, and over a dead mount's (/NAME)
udm_loops() {
    losetup -n -l -O NAME,BACK-FILE | awk -v m="$MNT/" 'index($2, m) == 1 || $2 ~ /^\/(base|top)$/ { print $1 }' | sort
}

log "shutdown is refused while a block device is mounted"
expect_udm_error "$WORK/e" shutdown
grep -q "block device $MAPPER/top is open" "$WORK/e" || fail "shutdown while mounted: $(cat "$WORK/e")"
[[ -b $MAPPER/top ]] || fail "a refused shutdown removed $MAPPER/top"
umount "$WORK/fs"

check_back() { # WHAT: both nodes back, one loop each, the file system mounts with its data
    local n
    for n in base top; do
        [[ -b $MAPPER/$n ]] || fail "$1: $MAPPER/$n is missing"
    done
    n=$(udm_loops | wc -l)
    [[ $n == 2 ]] || fail "$1: $n loop devices over udm disks, expected 2: $(losetup -a)"
    [[ $(dms table top) == "0 65536 linear $(dms info -c --noheadings -o major,minor base) 65536" ]] ||
        fail "$1: dmsetup table top: $(dms table top)"
    mount "$MAPPER/top" "$WORK/fs" || fail "$1: mount $MAPPER/top"
    cmp "$WORK/fs/data" "$WORK/p" || fail "$1: the file on $MAPPER/top differs"
    umount "$WORK/fs"
}

log "clean shutdown and restart"
stop_daemon
[[ -z $(udm_loops) ]] || fail "shutdown left loop devices: $(losetup -a)"
[[ ! -e $MAPPER/top ]] || fail "shutdown left $MAPPER/top"
start_daemon --mapper-dir "$MAPPER"
check_back "after a clean restart"

log "kill -9 and restart"
kill9_daemon
start_daemon --mapper-dir "$MAPPER"
check_back "after kill -9"

dms remove top
dms remove base
[[ -z $(udm_loops) ]] || fail "remove left loop devices: $(losetup -a)"
[[ -z $(ls -A "$MAPPER") ]] || fail "remove left nodes: $(ls "$MAPPER")"
echo "PASS: $TEST_NAME"
