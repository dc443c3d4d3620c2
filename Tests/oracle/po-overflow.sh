#!/usr/bin/env bash
# Runs po-overflow-steps.sh against the real kernel's dm-snapshot (Debian 6.1, via the dmvm
# oracle) and prints the transcript; po-overflow.kernel is its recorded output, which
# Tests/integration/test-snapshot-overflow.sh compares udm with.
# Usage: Tests/oracle/po-overflow.sh [path to dmvm]  (default /work/shared/oracle/dmvm)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
DMVM=${1:-/work/shared/oracle/dmvm}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
(set +o pipefail; yes ORIGIN | head -c $((1024 * 1024)) >"$W/origin.img")
truncate -s 64K "$W/cow.img"
cat >"$W/run.sh" <<'VM'
set -e
dmsetup create snap --table "0 2048 snapshot /dev/vda /dev/vdb PO 8"
dmsetup create orig --table "0 2048 snapshot-origin /dev/vda"
SNAP=/dev/mapper/snap ORIG=/dev/mapper/orig TMPF=/tmp/chunk
snap_status() { dmsetup status snap; }
set +e
. /in/po-overflow-steps.sh
VM
"$DMVM" --disk "$W/origin.img" --disk "$W/cow.img" --file "$HERE/po-overflow-steps.sh" --script "$W/run.sh"
