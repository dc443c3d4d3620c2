#!/usr/bin/env bash
# Runs log-writes-steps.sh against the real kernel's dm-log-writes (Debian 6.1, via the dmvm
# oracle) over a 1 MiB all-zero data disk and a 1 MiB all-zero log disk, then removes the
# device (which logs the end mark). Prints the transcript, then the data disk's and the log
# disk's sha256; with OUT_LOG set, copies the log disk there. log-writes.kernel is the
# recorded transcript and log-writes.kernel.log.gz the log (gzip -9n), which
# Tests/integration/test-log-writes-oracle.sh compares udm with.
# Usage: [OUT_LOG=path] Tests/oracle/log-writes.sh [path to dmvm]  (default /work/shared/oracle/dmvm)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
DMVM=${1:-/work/shared/oracle/dmvm}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
truncate -s 1M "$W/data.img" "$W/log.img"
cat >"$W/run.sh" <<'VM'
set -e
dmsetup create lw --table "0 2048 log-writes /dev/vda /dev/vdb"
DEV=/dev/mapper/lw DD=/in/dd TMPF=/tmp/block
lw_status() { dmsetup status lw | cut -d' ' -f4-; }
lw_mark() { dmsetup message lw 0 mark "$1"; }
lw_discard() { blkdiscard -o "$1" -l "$2" "$DEV"; }
# The block device flushes after an O_DSYNC write by itself.
lw_fua_write() { w "$1" "$2" "$3" dsync; }
set +e
. /in/log-writes-steps.sh
dmsetup remove lw
VM
"$DMVM" --disk "$W/data.img" --disk "$W/log.img" --file "$(command -v dd)" \
    --file "$HERE/log-writes-steps.sh" --script "$W/run.sh"
echo "data: $(sha256sum <"$W/data.img" | cut -d' ' -f1)"
echo "log: $(sha256sum <"$W/log.img" | cut -d' ' -f1)"
[ -z "${OUT_LOG:-}" ] || cp "$W/log.img" "$OUT_LOG"
