#!/usr/bin/env bash
# udm stats counts exactly the I/Os made: dd of N direct blocks of B bytes gives N writes and
# N*B/512 sectors (differences from before); reads and fsyncs likewise; a split across targets
# counts as a merge; --clear starts again from zero. ls, table, status and info take --json.
source "$(dirname "$0")/functions.sh"

A=$(make_image a.img 8M)
B=$(make_image b.img 8M)
start_daemon
udm_ok create s --table "0 4096 linear $A 0
4096 4096 linear $B 0"
D=$(disk_file s)
make_pattern "$WORK/p" $((1024 * 1024)) 51

# counters NAME: "read_ios read_sectors read_merges write_ios write_sectors write_merges flush_ios in_flight"
counters() {
    udm stats "$1" --json | python3 -c '
import json, sys
d = json.load(sys.stdin)["disks"][0]
for op in ("read", "write"):
    assert sum(d[op]["histogram"]) == d[op]["ios"], "histogram total != ios"
    assert len(d[op]["histogram"]) == 32
print(d["read"]["ios"], d["read"]["sectors"], d["read"]["merges"],
      d["write"]["ios"], d["write"]["sectors"], d["write"]["merges"], d["flush"]["ios"], d["inFlight"])' ||
        fail "udm stats $1 --json did not parse"
}

# expect_delta WHAT BEFORE AFTER WANT: AFTER - BEFORE, field by field, equals WANT
expect_delta() {
    local what=$1 i got=()
    local -a before=($2) after=($3) want=($4)
    for i in "${!want[@]}"; do got+=($((after[i] - before[i]))); done
    [[ ${got[*]} == "${want[*]}" ]] ||
        fail "$what: counters moved by [${got[*]}], expected [${want[*]}] (read ios/sectors/merges, write ios/sectors/merges, flushes, in flight)"
}

log "dd of 10 direct 64 KiB writes: 10 writes, 1280 sectors"
c0=$(counters s)
dd if="$WORK/p" of="$D" bs=65536 count=10 oflag=direct conv=notrunc status=none || fail "dd write failed"
c1=$(counters s)
expect_delta "10 x 64 KiB writes" "$c0" "$c1" "0 0 0 10 1280 0 0 0"

log "dd of 7 direct 4 KiB reads: 7 reads, 56 sectors"
dd if="$D" of=/dev/null bs=4096 count=7 iflag=direct status=none || fail "dd read failed"
c2=$(counters s)
expect_delta "7 x 4 KiB reads" "$c1" "$c2" "7 56 0 0 0 0 0 0"

log "fsync: one flush"
python3 -c 'import os, sys; fd = os.open(sys.argv[1], os.O_RDWR); os.fsync(fd); os.close(fd)' "$D" || fail "fsync failed"
c3=$(counters s)
expect_delta "fsync" "$c2" "$c3" "0 0 0 0 0 0 1 0"

log "a write across the two targets counts once, as a merge"
dd if="$WORK/p" of="$D" bs=8192 count=1 oflag=seek_bytes,direct seek=$((4096 * 512 - 4096)) conv=notrunc status=none ||
    fail "dd write across targets failed"
c4=$(counters s)
expect_delta "write across targets" "$c3" "$c4" "0 0 0 1 16 1 0 0"
expect_same "$A" $((4096 * 512 - 4096)) "$WORK/p" 0 4096 "first half in A"
expect_same "$B" 0 "$WORK/p" 4096 4096 "second half in B"

log "text output"
udm stats s >"$WORK/stats.txt" || fail "udm stats failed"
grep -qE '^s: 0 in flight$' "$WORK/stats.txt" || fail "udm stats header: $(cat "$WORK/stats.txt")"
grep -qE '^  write +11 +1 +1296 ' "$WORK/stats.txt" || fail "udm stats write line: $(cat "$WORK/stats.txt")"
grep -qE '^  read +7 +0 +56 ' "$WORK/stats.txt" || fail "udm stats read line: $(cat "$WORK/stats.txt")"

log "--clear prints, then starts from zero"
udm stats s --clear --json | python3 -c 'import json,sys; assert json.load(sys.stdin)["disks"][0]["write"]["ios"] == 11' ||
    fail "udm stats --clear did not print the counters before clearing"
expect_delta "after --clear" "0 0 0 0 0 0 0 0" "$(counters s)" "0 0 0 0 0 0 0 0"
dd if="$WORK/p" of="$D" bs=4096 count=3 oflag=direct conv=notrunc status=none || fail "dd write failed"
expect_delta "3 writes after --clear" "0 0 0 0 0 0 0 0" "$(counters s)" "0 0 0 3 24 0 0 0"

log "every disk, and --json on ls, table, status and info"
udm_ok create z --table "0 100 zero"
udm stats --json | python3 -c 'import json,sys; assert [d["name"] for d in json.load(sys.stdin)["disks"]] == ["s", "z"]' ||
    fail "udm stats --json (all disks): $(udm stats --json)"
udm ls --json | python3 -c '
import json, sys
disks = json.load(sys.stdin)["disks"]
assert [d["name"] for d in disks] == ["s", "z"], disks
assert disks[0]["file"] == sys.argv[1], disks' "$D" || fail "udm ls --json: $(udm ls --json)"
udm table s --json | python3 -c '
import json, sys
(disk,) = json.load(sys.stdin)["disks"]
assert disk["name"] == "s"
assert disk["lines"] == [{"start": 0, "length": 4096, "target": "linear", "params": sys.argv[1] + " 0"},
                         {"start": 4096, "length": 4096, "target": "linear", "params": sys.argv[2] + " 0"}], disk' "$A" "$B" ||
    fail "udm table --json: $(udm table s --json)"
udm status z --json | python3 -c '
import json, sys
assert json.load(sys.stdin)["disks"] == [{"name": "z", "lines": [{"start": 0, "length": 100, "target": "zero", "params": ""}]}]' ||
    fail "udm status --json: $(udm status z --json)"
udm info s --json | python3 -c '
import json, sys
(d,) = json.load(sys.stdin)["disks"]
assert (d["name"], d["state"], d["liveTable"], d["inactiveTable"], d["targets"], d["sectors"]) == ("s", "ACTIVE", True, False, 2, 8192), d
assert sorted(d) == ["biosetSize", "file", "inactiveTable", "liveTable", "name", "openCount", "queueDepth", "requestsActive", "requestsWaiting", "sectors", "state", "targets", "transport"], d
assert d["transport"] == sys.argv[1], d' "${UDM_TRANSPORT:-legacy}" ||
    fail "udm info --json: $(udm info s --json)"
udm stats s --json | python3 -c '
import json, sys
(d,) = json.load(sys.stdin)["disks"]
assert d["transport"] == sys.argv[1], d' "${UDM_TRANSPORT:-legacy}" ||
    fail "udm stats --json names the transport: $(udm stats s --json)"
udm info s | grep -qx "Transport: *${UDM_TRANSPORT:-legacy}" || fail "udm info names the transport: $(udm info s)"
stop_daemon
