#!/usr/bin/env bash
# Two linear lines at non-zero offsets over two images: bytes written through MOUNT/NAME land
# at the mapped offsets in the images, read back the same, and nothing else in the images
# changes. A model file gets the same writes as the disk and is the reference for everything.
source "$(dirname "$0")/functions.sh"

MiB=$((1024 * 1024))
A=$(make_image a.img 8M)
B=$(make_image b.img 8M)

# disk bytes [0, 4 MiB) -> A at +1 MiB; [4 MiB, 8 MiB) -> B at +2 MiB
TABLE="# two halves, non-zero offsets
0    8192 linear $A 2048

8192 8192   linear $B   4096   # second half
"
SIZE=$((16384 * 512))
BOUNDARY=$((8192 * 512))

start_daemon
udm_ok create d --table "$TABLE"
D=$(disk_file d)
[[ -f $D ]] || fail "$D does not exist after create"
expect_size "$D" "$SIZE"
expect_table d "$TABLE"
disk_listed d || fail "udm ls does not list d"
status=$(udm status d) || fail "udm status d failed"
[[ $(grep -c '' <<<"$status") == 2 ]] || fail "udm status d: expected 2 lines, got [$status]"
grep -q '^0 8192 linear' <<<"$status" || fail "udm status d: no '0 8192 linear' line: [$status]"
grep -q '^8192 8192 linear' <<<"$status" || fail "udm status d: no '8192 8192 linear' line: [$status]"

MODEL=$WORK/model
truncate -s "$SIZE" "$MODEL"
make_pattern "$WORK/p" $((3 * MiB)) 1

# disk_write SRCOFF DISKOFF LEN [OFLAGS]: the same bytes into the disk and into the model
disk_write() {
    write_at "$WORK/p" "$1" "$D" "$2" "$3" "${4:-}" || fail "write of $3 bytes at $2 through $D failed"
    write_at "$WORK/p" "$1" "$MODEL" "$2" "$3"
}

log "2 MiB across the boundary, starting 1 MiB before it (direct)"
disk_write 0 $((BOUNDARY - MiB)) $((2 * MiB)) direct
# explicit: the first MiB lands in A at 1 MiB + 3 MiB, the second in B at 2 MiB
expect_same "$A" $((MiB + 3 * MiB)) "$WORK/p" 0 "$MiB" "first half in A"
expect_same "$B" $((2 * MiB)) "$WORK/p" "$MiB" "$MiB" "second half in B"

log "odd sector-aligned offsets"
disk_write $((2 * MiB)) $((777 * 512)) $((7 * 512)) direct
disk_write $((2 * MiB + 4096)) $((12345 * 512)) $((33 * 512)) direct
disk_write 12345 $((8191 * 512)) $((2 * 512)) direct        # last sector of A's line + first of B's
disk_write 54321 $((SIZE - 512)) 512 direct                  # last sector of the disk
expect_same "$A" $((2048 * 512 + 777 * 512)) "$WORK/p" $((2 * MiB)) $((7 * 512)) "sector 777"
expect_same "$B" $((4096 * 512 + (12345 - 8192) * 512)) "$WORK/p" $((2 * MiB + 4096)) $((33 * 512)) "sector 12345"
expect_same "$B" $((4096 * 512 + 8191 * 512)) "$WORK/p" 54321 512 "last sector"

log "non-sector-aligned offsets and lengths (buffered + fsync)"
disk_write 100001 1234567 10000
disk_write 200003 $((BOUNDARY - 777)) 2000                   # crosses the boundary
disk_write 300007 $((5 * MiB + 3)) 1                         # one byte
disk_write 400009 $((SIZE - 100)) 100                        # up to the very end
expect_same "$A" $((MiB + 1234567)) "$WORK/p" 100001 10000 "unaligned in A"
expect_same "$A" $((MiB + BOUNDARY - 777)) "$WORK/p" 200003 777 "unaligned across boundary (A part)"
expect_same "$B" $((2 * MiB)) "$WORK/p" $((200003 + 777)) $((2000 - 777)) "unaligned across boundary (B part)"

log "images against the model: mapped ranges equal, everything else still zero"
expect_same "$A" "$MiB" "$MODEL" 0 "$BOUNDARY" "A mapped range"
expect_same "$B" $((2 * MiB)) "$MODEL" "$BOUNDARY" $((SIZE - BOUNDARY)) "B mapped range"
expect_zero "$A" 0 "$MiB" "A before its range"
expect_zero "$A" $((MiB + BOUNDARY)) $((8 * MiB - MiB - BOUNDARY)) "A after its range"
expect_zero "$B" 0 $((2 * MiB)) "B before its range"
expect_zero "$B" $((2 * MiB + SIZE - BOUNDARY)) $((8 * MiB - 2 * MiB - (SIZE - BOUNDARY))) "B after its range"
expect_size "$A" $((8 * MiB))
expect_size "$B" $((8 * MiB))

log "read back through $D (buffered, direct, odd ranges)"
expect_same "$D" 0 "$MODEL" 0 "$SIZE" "whole disk, buffered"
read_at "$D" 0 "$SIZE" direct >"$WORK/direct" || fail "direct read of $D failed"
expect_same "$WORK/direct" 0 "$MODEL" 0 "$SIZE" "whole disk, direct"
read_at "$D" $((BOUNDARY - 4096)) 8192 direct >"$WORK/cross" || fail "direct read across boundary failed"
expect_same "$WORK/cross" 0 "$MODEL" $((BOUNDARY - 4096)) 8192 "direct read across boundary"
read_at "$D" $((BOUNDARY - 333)) 1000 >"$WORK/odd" || fail "unaligned read failed"
expect_same "$WORK/odd" 0 "$MODEL" $((BOUNDARY - 333)) 1000 "unaligned read across boundary"
sha_model=$(sha "$MODEL")
[[ $(sha "$D") == "$sha_model" ]] || fail "sha256 of $D differs from the model"

log "block-device semantics at the end: reads stop at the size, writes don't grow it"
n=$(dd if="$D" bs=4096 iflag=skip_bytes skip="$SIZE" count=1 status=none | wc -c)
[[ $n == 0 ]] || fail "read at the end of $D returned $n bytes"
if dd if="$WORK/p" of="$D" bs=4096 count=1 oflag=seek_bytes seek="$SIZE" conv=notrunc,fsync status=none 2>/dev/null; then
    fail "a write at the end of $D (offset $SIZE) succeeded; a block device gives ENOSPC"
fi
expect_size "$D" "$SIZE"
truncate -s $((2 * SIZE)) "$D" 2>/dev/null || true
expect_size "$D" "$SIZE"
expect_size "$A" $((8 * MiB))
expect_size "$B" $((8 * MiB))

udm_ok remove d
[[ ! -e $D ]] || fail "$D still exists after remove"
stop_daemon
