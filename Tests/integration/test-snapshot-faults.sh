#!/usr/bin/env bash
# A full COW in each store mode gives dm's states and never harms the origin; a corrupt COW
# header (bad magic, bad chunk size, truncated) is refused with a clear error, the file left
# untouched and the origin as it was.
source "$(dirname "$0")/functions.sh"

O_IMG=$(make_image origin.img 8M)
SECTORS=16384
fill_image "$O_IMG" 5
start_daemon
udm_ok create origin --table "0 $SECTORS linear $O_IMG 0"
ORIGIN=$(disk_file origin)
CHUNK_BYTES=8192   # chunk size 16 sectors
# header + area 0 + 6 data chunks
SMALL=$((8 * CHUNK_BYTES))

# origin_write SEED OFFSET LEN: write a pattern to the origin, remember it in the model copy
cp "$O_IMG" "$WORK/model"
origin_write() {
    make_pattern "$WORK/w" "$3" "$1"
    write_at "$WORK/w" 0 "$ORIGIN" "$2" "$3" direct || fail "origin write at $2 failed"
    dd if="$WORK/w" of="$WORK/model" bs=1M oflag=seek_bytes seek="$2" conv=notrunc status=none
}
expect_origin_intact() {
    read_at "$ORIGIN" 0 $((SECTORS * 512)) direct >"$WORK/origin.now" || fail "reading the origin failed"
    cmp -s "$WORK/origin.now" "$WORK/model" || fail "the origin does not hold what was written to it"
}

for mode in P N; do
    log "store $mode: origin writes past the COW's room invalidate the snapshot, the origin goes on"
    flag=; [[ $mode == N ]] && flag=--transient
    udm_ok snapshot create origin full$mode --cow "$IMG/full$mode.cow" --size $SMALL --chunk-size 16 $flag
    origin_write 1$mode 0 $((10 * CHUNK_BYTES))
    [[ $(udm status full$mode) == "0 $SECTORS snapshot Invalid" ]] || fail "status: $(udm status full$mode)"
    read_at "$(disk_file full$mode)" 0 4096 direct >/dev/null 2>&1 && fail "a read of an invalid snapshot succeeded"
    origin_write 2$mode $((1024 * 1024)) $((3 * CHUNK_BYTES))
    expect_origin_intact
    if [[ $mode == P ]]; then
        [[ $(od -A n -t u4 -j 4 -N 4 "$IMG/fullP.cow" | tr -d ' ') == 0 ]] || fail "the COW header still says valid"
    fi
    udm_ok snapshot remove full$mode
done

log "store PO: a snapshot write that finds the COW full overflows; reads go on, the origin too"
udm_ok snapshot create origin over --cow "$IMG/over.cow" --size $SMALL --chunk-size 16 --overflow
read_at "$ORIGIN" 0 $((SECTORS * 512)) direct >"$WORK/at-snapshot"
make_pattern "$WORK/sw" $((6 * CHUNK_BYTES)) 9
write_at "$WORK/sw" 0 "$(disk_file over)" $((2 * 1024 * 1024)) $((6 * CHUNK_BYTES)) direct || fail "snapshot write within room failed"
write_at "$WORK/sw" 0 "$(disk_file over)" $((3 * 1024 * 1024)) $CHUNK_BYTES direct 2>/dev/null &&
    fail "a snapshot write past the COW's room succeeded"
[[ $(udm status over) == "0 $SECTORS snapshot Overflow" ]] || fail "status: $(udm status over)"
read_at "$(disk_file over)" $((2 * 1024 * 1024)) $((6 * CHUNK_BYTES)) direct >"$WORK/sw.back" ||
    fail "reading an overflowed snapshot failed"
expect_same "$WORK/sw" 0 "$WORK/sw.back" 0 $((6 * CHUNK_BYTES)) "overflowed snapshot data"
expect_same "$(disk_file over)" 0 "$WORK/at-snapshot" 0 $((1024 * 1024)) "overflowed snapshot, untouched chunks"
origin_write 3 $((5 * 1024 * 1024)) $CHUNK_BYTES
expect_origin_intact
udm_ok snapshot remove over

log "corrupt COW headers are refused, untouched, and the origin stays as it was"
TABLE="0 $SECTORS linear $O_IMG 0"
refuse() { # refuse FILE WHAT: snapshot create must fail naming WHAT, leaving FILE and origin as they were
    local before
    before=$(sha "$1")
    expect_udm_error "$WORK/err" snapshot create origin bad --cow "$1"
    grep -q "$2" "$WORK/err" || fail "error does not say '$2': $(cat "$WORK/err")"
    [[ $(sha "$1") == "$before" ]] || fail "the refused COW file $1 was changed"
    expect_table origin "$TABLE"
    disk_listed bad && fail "the refused snapshot exists"
    disk_listed origin-real && fail "origin-real left behind"
    [[ $(udm info origin | awk '/^State:/ { print $2 }') == ACTIVE ]] || fail "origin left suspended"
    origin_write 4 0 4096
    expect_origin_intact
}
make_pattern "$IMG/magic.cow" $((64 * 1024)) 3
refuse "$IMG/magic.cow" "bad magic"
truncate -s 64K "$IMG/chunk.cow"
printf 'SnAp\001\000\000\000\001\000\000\000\003\000\000\000' | dd of="$IMG/chunk.cow" conv=notrunc status=none
refuse "$IMG/chunk.cow" "bad chunk size 3"
udm_ok snapshot create origin good --cow "$IMG/good.cow" --chunk-size 16
origin_write 5 0 $((4 * CHUNK_BYTES))
udm_ok snapshot remove good
head -c $((CHUNK_BYTES + 512)) "$IMG/good.cow" >"$IMG/truncated.cow"
refuse "$IMG/truncated.cow" "too small"
stop_daemon
