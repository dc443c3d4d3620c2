# The log-writes sequence, shared by the kernel run (log-writes.sh, busybox sh in the dmvm VM,
# with GNU dd copied in) and udm's (Tests/integration/test-log-writes-oracle.sh, bash). Both
# print this transcript and leave a log device that must be the same byte for byte. The
# caller sets DEV (the log-writes device, 2048 sectors, over an all-zero data device), DD (GNU
# dd), TMPF (a scratch file) and defines lw_status (prints the target's status part),
# lw_mark LABEL, lw_discard OFFSET LENGTH (bytes) and lw_fua_write, which does one O_DIRECT
# O_DSYNC write and then one flush (a block device flushes after an O_DSYNC write by itself,
# a FUSE file with direct_io does not, so udm's caller sends the flush).
# Writes go one at a time (each dd waits for its write), so their completion order is the
# order below and the two logs can be compared byte for byte.

# w OFFSET KIB TEXT [FLAGS]: one O_DIRECT write of KIB KiB at byte OFFSET, every line TEXT.
w() {
    (set +o pipefail 2>/dev/null; yes "$3" | head -c $(($2 * 1024)) >"$TMPF")
    "$DD" if="$TMPF" of="$DEV" bs=$(($2 * 1024)) seek="$1" count=1 oflag=direct,seek_bytes${4:+,$4} conv=notrunc status=none &&
        echo "write $2K at byte $1: ok" || echo "write $2K at byte $1: error"
}

# status: the target's status once the log's writer has caught up with what has completed
# (it logs on its own thread, in the kernel as in udm).
status() {
    _a=$(lw_status)
    while sleep 0.2; _b=$(lw_status); [ "$_a" != "$_b" ]; do _a=$_b; done
    echo "$_a"
}

# flush: an empty flush (fsync of the device).
flush() {
    "$DD" if=/dev/null of="$DEV" conv=notrunc,fsync status=none && echo "flush: ok" || echo "flush: error"
}

echo "status at start: $(status)"
w $((8 * 512)) 4 alpha
w $((64 * 512)) 8 beta
w $((16 * 512)) 4 gamma
echo "status before a flush: $(status)"
flush
echo "status after a flush: $(status)"
w $((100 * 512)) 4 delta
lw_fua_write $((200 * 512)) 4 epsilon && echo "fua write: ok"
echo "status after a FUA write: $(status)"
lw_discard $((1024 * 512)) $((64 * 512)) && echo "discard: ok"
w $((300 * 512)) 64 zeta
lw_mark first && echo "mark first: ok"
echo "status after a mark: $(status)"
flush
w $((8 * 512)) 4 eta
lw_mark second && echo "mark second: ok"
echo "status at the end: $(status)"
