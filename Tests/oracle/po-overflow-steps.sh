# The PO-overflow sequence, shared by the kernel run (po-overflow.sh, busybox sh in the dmvm
# VM) and udm's (Tests/integration/test-snapshot-overflow.sh, bash); both print this transcript
# and it must be the same. The caller sets SNAP (the snapshot device), ORIG (the origin device),
# TMPF (a scratch file) and defines snap_status (prints the snapshot's status line). The
# snapshot: PO, chunk 8 sectors (4 KiB), COW of 64 KiB = header + area 0 + 14 data chunks,
# origin 1 MiB of "ORIGIN" lines.

# w DEV WHAT CHUNK TEXT: one O_DIRECT 4 KiB write to chunk CHUNK: the line TEXT, then zeros.
w() {
    dd if=/dev/zero of="$TMPF.w" bs=4096 count=1 2>/dev/null
    printf '%s\n' "$4" | dd of="$TMPF.w" conv=notrunc 2>/dev/null
    if dd if="$TMPF.w" of="$1" bs=4096 seek="$3" count=1 oflag=direct conv=notrunc 2>/dev/null; then
        echo "write $2 chunk $3: ok"
    else
        echo "write $2 chunk $3: error"
    fi
}

# r DEV WHAT CHUNK: one O_DIRECT 4 KiB read of chunk CHUNK; prints its first line.
r() {
    if dd if="$1" of="$TMPF" bs=4096 skip="$3" count=1 iflag=direct 2>/dev/null; then
        echo "read $2 chunk $3: ok $(head -n 1 "$TMPF")"
    else
        echo "read $2 chunk $3: error"
    fi
}

echo "status at start: $(snap_status)"
i=0
while [ $i -lt 14 ]; do
    w "$SNAP" snapshot $i "SNAP$i"
    i=$((i + 1))
done
echo "status with the COW full: $(snap_status)"
w "$SNAP" snapshot 14 SNAP14
echo "status after a write past the room: $(snap_status)"
w "$SNAP" snapshot 0 AGAIN
w "$SNAP" snapshot 20 NEW
r "$SNAP" snapshot 0
r "$SNAP" snapshot 30
w "$ORIG" origin 0 ORIGW0
r "$SNAP" snapshot 0
echo "status after an origin write to a copied chunk: $(snap_status)"
w "$ORIG" origin 40 ORIGW40
echo "status after an origin write that needs a copy: $(snap_status)"
r "$SNAP" snapshot 0
r "$SNAP" snapshot 30
r "$ORIG" origin 0
r "$ORIG" origin 40
