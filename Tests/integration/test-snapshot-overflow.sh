#!/usr/bin/env bash
# An overflowed PO snapshot behaves as the kernel's: the sequence of Tests/oracle/
# po-overflow-steps.sh (fill the COW, then writes to chunks with and without an exception,
# reads, origin writes) gives, line for line, the transcript the real dm-snapshot gave
# (Tests/oracle/po-overflow.kernel, recorded with Tests/oracle/po-overflow.sh).
source "$(dirname "$0")/functions.sh"
ORACLE=$REPO_ROOT/Tests/oracle

O_IMG=$(make_image origin.img 1M)
(set +o pipefail; yes ORIGIN | head -c $((1024 * 1024)) >"$O_IMG")
start_daemon
udm_ok create origin --table "0 2048 linear $O_IMG 0"
udm_ok snapshot create origin snap --cow "$IMG/snap.cow" --size 64K --chunk-size 8 --overflow

SNAP=$(disk_file snap) ORIG=$(disk_file origin) TMPF=$WORK/chunk
snap_status() { udm status snap; }
(set +eo pipefail; source "$ORACLE/po-overflow-steps.sh") >"$WORK/udm.out"
diff -u "$ORACLE/po-overflow.kernel" "$WORK/udm.out" >&2 || fail "udm's outcomes differ from the kernel's (above)"
udm_ok snapshot remove snap
