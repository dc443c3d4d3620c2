#!/usr/bin/env bash
# The command sequences of xfstests' common/dmflakey and common/dmerror, run on udm's dmsetup
# over a loop device: mkfs, mount /dev/mapper/NAME, write + fsync one file and write another
# without fsync; `suspend --nolockfs`, load flakey drop_writes (or error_writes), resume;
# unmount; load the pass-through table, resume, mount: the fsynced file is intact (checksum),
# the unsynced one absent, writes made while dropping gone, e2fsck clean. A suspend with lockfs
# freezes the file system first, so the unsynced file survives. dm-error: I/O fails with EIO
# until the working table is back, and fsynced data survives.
source "$(dirname "$0")/functions.sh"

MAPPER=$TESTDIR/mapper
BIN=$TESTDIR/bin
mkdir -p "$BIN" "$WORK/fs"
udm_ok install-dmsetup "$BIN"
export PATH=$BIN:$PATH
dms() { timeout -k 5 60 dmsetup "$@"; }
start_daemon --mapper-dir "$MAPPER"

SCRATCH=$(attach_loop "$(make_image scratch.img 128M)")
SIZE=$(blockdev --getsz "$SCRATCH")
FLAKEY_DEV=$MAPPER/flakey-test
FLAKEY_ALLOW_WRITES="0 $SIZE flakey $SCRATCH 0 180 0"
FLAKEY_DROP_WRITES="0 $SIZE flakey $SCRATCH 0 0 180 1 drop_writes"
FLAKEY_ERROR_WRITES="0 $SIZE flakey $SCRATCH 0 0 180 1 error_writes"
mkfs.ext4 -q -F "$SCRATCH" || fail "mkfs.ext4 $SCRATCH"
dms create flakey-test --table "$FLAKEY_ALLOW_WRITES"
[[ $(blockdev --getsz "$FLAKEY_DEV") == "$SIZE" ]] || fail "blockdev --getsz $FLAKEY_DEV"

make_pattern "$WORK/synced" $((3 * 1024 * 1024)) 11
make_pattern "$WORK/unsynced" $((2 * 1024 * 1024)) 12
make_pattern "$WORK/late" $((1024 * 1024)) 13

# load_table TABLE [--nolockfs]: _load_flakey_table's sequence
load_table() {
    dms suspend ${2:-} flakey-test || fail "dmsetup suspend ${2:-} flakey-test"
    dms load flakey-test --table "$1" || fail "dmsetup load flakey-test"
    dms resume flakey-test || fail "dmsetup resume flakey-test"
}

# A long journal commit interval: only fsync (or a freeze) makes data durable in this test.
mount_flakey() { mount -o commit=600 "$FLAKEY_DEV" "$WORK/fs" || fail "mount $FLAKEY_DEV"; }
unmount_flakey() { umount "$WORK/fs" || fail "umount $WORK/fs"; }

check_fs() {
    e2fsck -fn "$FLAKEY_DEV" >"$WORK/fsck" 2>&1 || fail "e2fsck -fn $FLAKEY_DEV: $(tail -n 5 "$WORK/fsck")"
}

# crash_case MODE TABLE LOCKFS: the sequence; LOCKFS is "" or --nolockfs
crash_case() {
    local mode=$1 table=$2 lockfs=$3 dir
    dir=$WORK/fs/$mode
    log "$mode, suspend ${lockfs:-with lockfs}"
    mount_flakey
    mkdir "$dir"
    sync -f "$WORK/fs"
    dd if="$WORK/synced" of="$dir/synced" bs=1M conv=fsync status=none || fail "$mode: write synced"
    cp "$WORK/unsynced" "$dir/unsynced"
    load_table "$table" "$lockfs"
    if [[ $table == *drop_writes ]]; then
        dd if="$WORK/late" of="$dir/late" bs=1M conv=fsync status=none || fail "$mode: an fsync while dropping failed"
    else
        ! dd if="$WORK/late" of="$dir/late" bs=1M conv=fsync status=none 2>"$WORK/dd.err" ||
            fail "$mode: an fsync while writes fail succeeded"
    fi
    unmount_flakey
    load_table "$FLAKEY_ALLOW_WRITES"
    mount_flakey
    cmp "$dir/synced" "$WORK/synced" || fail "$mode: the fsynced file is not intact"
    if [[ -z $lockfs ]]; then
        cmp "$dir/unsynced" "$WORK/unsynced" || fail "$mode: the file written before a lockfs suspend is not intact"
    else
        [[ ! -e $dir/unsynced ]] || fail "$mode: the file never fsynced survived ($(stat -c %s "$dir/unsynced") bytes)"
    fi
    [[ ! -e $dir/late ]] || fail "$mode: a file written while writes were dropped or failed survived"
    unmount_flakey
    check_fs
}

crash_case drop_writes "$FLAKEY_DROP_WRITES" --nolockfs
crash_case error_writes "$FLAKEY_ERROR_WRITES" --nolockfs
crash_case drop_lockfs "$FLAKEY_DROP_WRITES" ""
# A process holding the block device open keeps its buffer cache past the unmount: the
# remount must still not see blocks that were dropped (udm drops the buffers on resume).
exec 4<"$FLAKEY_DEV"
crash_case drop_held "$FLAKEY_DROP_WRITES" --nolockfs
exec 4<&-

log "a suspend with lockfs holds the file system frozen until resume"
mount_flakey
dms suspend flakey-test
[[ $(dms info -c --noheadings -o attr flakey-test) == L-sw ]] || fail "not suspended: $(dms info flakey-test)"
# A second freeze of a frozen file system is refused with EBUSY.
if fsfreeze -f "$WORK/fs" 2>"$WORK/freeze.err"; then
    fsfreeze -u "$WORK/fs"
    fail "ext4 on $FLAKEY_DEV was not frozen while suspended"
fi
grep -q 'busy' "$WORK/freeze.err" || fail "fsfreeze -f while suspended: $(cat "$WORK/freeze.err")"
dms resume flakey-test
touch "$WORK/fs/after-resume" || fail "the file system is not writable after resume"
unmount_flakey
dms remove --retry flakey-test
[[ ! -e $FLAKEY_DEV ]] || fail "remove left $FLAKEY_DEV"

log "dm-error (common/dmerror): error table swapped in and out"
DMERROR_DEV=$MAPPER/error-test
DMLINEAR_TABLE="0 $SIZE linear $SCRATCH 0"
DMERROR_TABLE="0 $SIZE error $SCRATCH 0"
dms create error-test --table "$DMLINEAR_TABLE"
mount -o commit=600 "$DMERROR_DEV" "$WORK/fs" || fail "mount $DMERROR_DEV"
dd if="$WORK/synced" of="$WORK/fs/kept" bs=1M conv=fsync status=none || fail "write kept"
dms suspend --nolockfs error-test
dms load error-test --table "$DMERROR_TABLE"
dms resume error-test
[[ $(dms table error-test) == "0 $SIZE error " ]] || fail "dmsetup table error-test: [$(dms table error-test)]"
! dd if="$WORK/late" of="$WORK/fs/lost" bs=1M conv=fsync status=none 2>"$WORK/dd.err" || fail "an fsync on dm-error succeeded"
! dd if="$DMERROR_DEV" of=/dev/null bs=4k count=1 skip=100 iflag=direct status=none 2>"$WORK/dd.err" ||
    fail "a read from dm-error succeeded"
grep -q 'Input/output error' "$WORK/dd.err" || fail "read from dm-error: $(cat "$WORK/dd.err")"
umount "$WORK/fs" || fail "umount on dm-error"
dms suspend --nolockfs error-test
dms load error-test --table "$DMLINEAR_TABLE"
dms resume error-test
mount "$DMERROR_DEV" "$WORK/fs" || fail "mount $DMERROR_DEV after dm-error"
cmp "$WORK/fs/kept" "$WORK/synced" || fail "dm-error: the fsynced file is not intact"
[[ ! -e $WORK/fs/lost ]] || fail "dm-error: a file written while I/O failed survived"
umount "$WORK/fs"
e2fsck -fn "$DMERROR_DEV" >"$WORK/fsck" 2>&1 || fail "e2fsck -fn $DMERROR_DEV: $(tail -n 5 "$WORK/fsck")"
dms remove --retry error-test
[[ -z $(ls -A "$MAPPER") ]] || fail "nodes left in $MAPPER: $(ls "$MAPPER")"
echo "PASS: $TEST_NAME"
