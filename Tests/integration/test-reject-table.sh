#!/usr/bin/env bash
# Bad tables are refused by `udm load` and `udm create` with one line on stderr naming the
# table line; the live table and the data are untouched.
source "$(dirname "$0")/functions.sh"

MiB=$((1024 * 1024))
A=$(make_image a.img 8M)        # 16384 sectors
B=$(make_image b.img 8M)
GOOD="0 4096 linear $A 2048
4096 4096 linear $B 0"
SIZE=$((8192 * 512))

start_daemon
udm_ok create good --table "$GOOD"
D=$(disk_file good)
make_pattern "$WORK/p" "$SIZE" 3
write_at "$WORK/p" 0 "$D" 0 "$SIZE" direct || fail "writing the pattern through $D failed"
expect_same "$A" $((2048 * 512)) "$WORK/p" 0 $((4096 * 512)) "pattern in A"
expect_same "$B" 0 "$WORK/p" $((4096 * 512)) $((4096 * 512)) "pattern in B"

L1="0 4096 linear $A 2048"
# "LINE-NUMBER|description|table"
BAD=(
    "2|gap|$L1
4104 4096 linear $B 0"
    "1|gap at the start|8 4096 linear $A 0"
    "2|overlap|$L1
4000 4096 linear $B 0"
    "2|zero length|$L1
4096 0 linear $B 0
4096 4096 linear $B 0"
    "2|unknown target|$L1
4096 4096 no-such-target $B 0"
    "2|non-numeric offset|$L1
4096 4096 linear $B abc"
    "1|negative offset|0 4096 linear $A -8"
    "1|non-numeric length|0 4k linear $A 0"
    "1|missing argument|0 4096 linear $A"
    "1|extra argument|0 4096 linear $A 0 7"
    "1|missing target type|0 4096"
    "2|missing backing file|$L1
4096 4096 linear $IMG/no-such.img 0"
    "2|backing file too small|$L1
4096 16384 linear $B 8"
    "1|offset beyond the backing file|0 8 linear $A 16384"
    "1|unknown udm disk|0 8 linear $MNT/no-such-disk 0"
    "1|arguments to zero|0 8192 zero junk"
    "1|stacked on itself|0 8192 linear $MNT/good 0"
    "1|size past 2^63 bytes|0 18014398509481984 zero"
    "1|length 2^64-1|0 18446744073709551615 zero"
)

# check_message FILE LINE WHAT: the one-line error names the table line
check_message() {
    local f=$1 line=$2 what=$3
    grep -qi 'line' "$f" || fail "$what: error does not mention the line: $(cat "$f")"
    grep -qiE "line:? *$line([^0-9]|$)" "$f" || fail "$what: error does not name line $line: $(cat "$f")"
}

for entry in "${BAD[@]}"; do
    line=${entry%%|*}
    rest=${entry#*|}
    what=${rest%%|*}
    table=${rest#*|}

    log "load: $what"
    expect_udm_error "$WORK/err" load good --table "$table"
    check_message "$WORK/err" "$line" "load ($what)"
    echo "    $(cat "$WORK/err")" >&2
    expect_table good "$GOOD"

    [[ $what == "stacked on itself" ]] && continue   # only a cycle for load

    log "create: $what"
    expect_udm_error "$WORK/err" create bad --table "$table"
    check_message "$WORK/err" "$line" "create ($what)"
    disk_listed bad && fail "create ($what) was refused but udm ls lists 'bad'"
    [[ -e $MNT/bad ]] && fail "create ($what) was refused but $MNT/bad exists"
done

log "the daemon is still healthy"
pid_alive "$DAEMON_PID" || fail "the daemon died"
timeout 10 ls -la "$MNT" >/dev/null || fail "ls -la $MNT failed"
pid_alive "$DAEMON_PID" || fail "the daemon died on ls -la $MNT"

log "create: a disk over its own file"
expect_udm_error "$WORK/err" create self --table "0 8 linear $MNT/self 0"
check_message "$WORK/err" 1 "create (over itself)"
disk_listed self && fail "create over itself was refused but udm ls lists 'self'"

log "a table file and stdin are checked the same way"
printf '%s\n' "$L1" "4096 4096 linear $B xyz" >"$WORK/bad.table"
expect_udm_error "$WORK/err" load good --table-file "$WORK/bad.table"
check_message "$WORK/err" 2 "load --table-file"
rc=0
printf '%s\n' "$L1" "4096 4096 linear $B xyz" | udm load good >/dev/null 2>"$WORK/err" || rc=$?
((rc != 0)) || fail "load from stdin accepted a bad table"
check_message "$WORK/err" 2 "load from stdin"
expect_table good "$GOOD"

log "a cycle through two disks: X over Y, then reload Y over X"
udm_ok create y --table "0 2048 linear $A 0"
udm_ok create x --table "0 2048 linear $MNT/y 0"
expect_udm_error "$WORK/err" load y --table "0 2048 linear $MNT/x 0"
check_message "$WORK/err" 1 "load y over x (cycle)"
echo "    $(cat "$WORK/err")" >&2
expect_table y "0 2048 linear $A 0"
expect_table x "0 2048 linear $MNT/y 0"
udm_ok remove x
udm_ok remove y

log "a table that fits exactly is accepted"
udm_ok create edge --table "0 16376 linear $B 8"
expect_size "$MNT/edge" $((16376 * 512))
udm_ok remove edge

log "nothing was left in the inactive slot: suspend + resume keeps the live table"
udm_ok suspend good
udm_ok resume good
expect_table good "$GOOD"

log "the data still reads back"
expect_same "$D" 0 "$WORK/p" 0 "$SIZE" "data through $D after the rejected tables"
read_at "$D" 0 "$SIZE" direct >"$WORK/back" || fail "direct read of $D failed"
expect_same "$WORK/back" 0 "$WORK/p" 0 "$SIZE" "direct read after the rejected tables"
expect_same "$A" $((2048 * 512)) "$WORK/p" 0 $((4096 * 512)) "pattern in A at the end"
expect_same "$B" 0 "$WORK/p" $((4096 * 512)) $((4096 * 512)) "pattern in B at the end"
stop_daemon
