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
dms create dmrs-base --table "0 131072 linear $A 0"
dms create dmrs-top --table "0 65536 linear $MAPPER/dmrs-base 65536"
mkfs.ext4 -q "$MAPPER/dmrs-top" || fail "mkfs.ext4 $MAPPER/dmrs-top"
mount "$MAPPER/dmrs-top" "$WORK/fs" || fail "mount $MAPPER/dmrs-top"
make_pattern "$WORK/p" $((4 * 1024 * 1024)) 5
cp "$WORK/p" "$WORK/fs/data"
sync -f "$WORK/fs"

# udm_loops: loop devices over this daemon's disk files, and over a dead mount's (/NAME)
udm_loops() {
    losetup -n -l -O NAME,BACK-FILE | awk -v m="$MNT/" 'index($2, m) == 1 || $2 ~ /^\/dmrs-(base|top)$/ { print $1 }' | sort
}

# A failure after kill -9 could leave the dead mount's loops, which the common cleanup does not
# know (their backing file shows as /NAME): detach them first.
release_dead_loops() {
    local rc=$? loop
    for loop in $(losetup -n -l -O NAME,BACK-FILE | awk '$2 ~ /^\/dmrs-(base|top)$/ { print $1 }'); do
        losetup -d "$loop" 2>/dev/null
    done
    return $rc
}
trap 'release_dead_loops; _cleanup' EXIT

log "shutdown is refused while a block device is mounted"
expect_udm_error "$WORK/e" shutdown
grep -q "block device $MAPPER/dmrs-top is open" "$WORK/e" || fail "shutdown while mounted: $(cat "$WORK/e")"
[[ -b $MAPPER/dmrs-top ]] || fail "a refused shutdown removed $MAPPER/dmrs-top"
umount "$WORK/fs"

check_back() { # WHAT: both nodes back, one loop each, the file system mounts with its data
    local n
    for n in dmrs-base dmrs-top; do
        [[ -b $MAPPER/$n ]] || fail "$1: $MAPPER/$n is missing"
    done
    n=$(udm_loops | wc -l)
    [[ $n == 2 ]] || fail "$1: $n loop devices over udm disks, expected 2: $(losetup -a)"
    [[ $(dms table dmrs-top) == "0 65536 linear $(dms info -c --noheadings -o major,minor dmrs-base) 65536" ]] ||
        fail "$1: dmsetup table dmrs-top: $(dms table dmrs-top)"
    mount "$MAPPER/dmrs-top" "$WORK/fs" || fail "$1: mount $MAPPER/dmrs-top"
    cmp "$WORK/fs/data" "$WORK/p" || fail "$1: the file on $MAPPER/dmrs-top differs"
    umount "$WORK/fs"
}

log "clean shutdown and restart"
stop_daemon
[[ -z $(udm_loops) ]] || fail "shutdown left loop devices: $(losetup -a)"
[[ ! -e $MAPPER/dmrs-top ]] || fail "shutdown left $MAPPER/dmrs-top"
start_daemon --mapper-dir "$MAPPER"
check_back "after a clean restart"

log "kill -9 and restart"
kill9_daemon
start_daemon --mapper-dir "$MAPPER"
check_back "after kill -9"

dms remove dmrs-top
dms remove dmrs-base
[[ -z $(udm_loops) ]] || fail "remove left loop devices: $(losetup -a)"
[[ -z $(ls -A "$MAPPER") ]] || fail "remove left nodes: $(ls "$MAPPER")"
echo "PASS: $TEST_NAME"
