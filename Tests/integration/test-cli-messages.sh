#!/usr/bin/env bash
# The command line's messages (issue 12 item 10): each mistake is one line on stderr that says
# what is wrong, with a non-zero exit and no change of state; help goes to stdout with exit 0;
# snapshot list and targets answer --json like the other reports.
source "$(dirname "$0")/functions.sh"

# expect_line OUTFILE PATTERN CMD...: the command fails with one stderr line matching PATTERN
# (a fixed string).
expect_line() {
    local out=$1 pattern=$2
    shift 2
    local rc=0
    timeout -k 5 30 "$@" >"$WORK/stdout" 2>"$out" || rc=$?
    ((rc != 0)) || fail "$* succeeded, expected an error"
    ((rc != 124 && rc != 137)) || fail "$* timed out"
    [[ $(grep -c '' "$out") == 1 ]] || fail "$*: not one line on stderr: $(cat "$out")"
    grep -qF -- "$pattern" "$out" || fail "$*: expected '$pattern' in: $(cat "$out")"
}
NOBODY=(setpriv --reuid=65534 --regid=65534 --clear-groups)

log "a misspelt verb is named, with the nearest verb"
expect_line "$WORK/err" "unknown command 'crate', did you mean 'create'?" "$UDM_BIN" crate x
expect_line "$WORK/err" "unknown command 'craete', did you mean 'create'?" "$UDM_BIN" snapshot craete a b
expect_line "$WORK/err" "unknown command 'frobnicate'" "$UDM_BIN" frobnicate
expect_line "$WORK/err" "Unknown option '--bogus'" "$UDM_BIN" ls --bogus

log "udm daemon as a user who cannot use FUSE names what it cannot open"
if [[ $(stat -c %a /dev/fuse) == 600 ]]; then
    expect_line "$WORK/err" "cannot open /dev/fuse: Permission denied" \
        "${NOBODY[@]}" "$UDM_BIN" daemon --foreground --mount "$TESTDIR/nmnt" --state-dir "$TESTDIR/nstate" --socket "$TESTDIR/n.sock"
    expect_line "$WORK/err" "cannot open /dev/fuse: Permission denied" \
        "${NOBODY[@]}" "$UDM_BIN" daemon --mount "$TESTDIR/nmnt" --state-dir "$TESTDIR/nstate" --socket "$TESTDIR/n.sock"
    [[ -e $TESTDIR/nstate || -e $TESTDIR/nmnt ]] && fail "the refused daemon created its directories"
else
    log "(skipped: /dev/fuse is open to every user here)"
fi

A=$(make_image a.img 16M)
start_daemon
udm_ok create data --table "0 32768 linear $A 0"
udm ls >"$WORK/ls.before"

log "a user other than root is told the socket is root-only"
chmod o+x "$TESTDIR"    # so the socket's own mode is what refuses
expect_line "$WORK/err" "permission denied: the control socket $SOCK is root-only" "${NOBODY[@]}" "$UDM_BIN" ls

log "table files, names and chunk sizes: the reason, in one line"
expect_line "$WORK/err" "cannot read table file $TESTDIR/nonexistent: No such file or directory" \
    "$UDM_BIN" create t --table-file "$TESTDIR/nonexistent"
expect_line "$WORK/err" "invalid disk name '..': it names a directory" "$UDM_BIN" create .. --table "0 8 zero"
expect_line "$WORK/err" "invalid disk name 'a/b': '/' is not allowed" "$UDM_BIN" create a/b --table "0 8 zero"
expect_line "$WORK/err" "invalid chunk size '-8'" \
    "$UDM_BIN" snapshot create data s --cow "$IMG/s.cow" --chunk-size -8
expect_line "$WORK/err" "invalid chunk size 'big'" \
    "$UDM_BIN" snapshot create data s --cow "$IMG/s.cow" --chunk-size big
[[ -e $IMG/s.cow ]] && fail "a refused snapshot create made its COW file"
udm ls >"$WORK/ls.after"
cmp -s "$WORK/ls.before" "$WORK/ls.after" || fail "refused commands changed the disks: $(cat "$WORK/ls.after")"

log "snapshot list --json and targets --json"
[[ $(udm snapshot list --json) == '{"snapshots":[]}' ]] || fail "empty snapshot list --json: $(udm snapshot list --json)"
udm_ok snapshot create data s1 --cow "$IMG/s1.cow" --chunk-size 16
udm snapshot list --json >"$WORK/snap.json" || fail "udm snapshot list --json failed"
[[ $(grep -c '' "$WORK/snap.json") == 1 ]] || fail "snapshot list --json is not one line"
python3 - "$WORK/snap.json" <<'PY' || fail "snapshot list --json: $(cat "$WORK/snap.json")"
import json, sys
rows = json.load(open(sys.argv[1]))["snapshots"]
assert len(rows) == 1, rows
row = rows[0]
assert sorted(row) == ["chunk", "origin", "snapshot", "state", "usePercent"], row
assert (row["origin"], row["snapshot"], row["chunk"], row["state"]) == ("data", "s1", 16, "active"), row
assert isinstance(row["usePercent"], float) and 0 <= row["usePercent"] < 5, row
PY
udm targets --json >"$WORK/targets.json" || fail "udm targets --json failed"
python3 - "$WORK/targets.json" <<'PY' || fail "targets --json: $(cat "$WORK/targets.json")"
import json, sys
targets = {t["name"]: t["version"] for t in json.load(open(sys.argv[1]))["targets"]}
for name in ["linear", "striped", "snapshot", "snapshot-origin", "snapshot-merge", "error", "zero"]:
    assert name in targets, name
assert all(v.count(".") == 2 for v in targets.values()), targets
PY
udm_ok snapshot remove s1

log "help goes to stdout with exit 0"
"$REPO_ROOT/mount/udm-mount" --help >"$WORK/help.out" 2>"$WORK/help.err" || fail "udm-mount --help exited $?"
grep -q "^usage: udm-mount" "$WORK/help.out" || fail "udm-mount --help printed no usage on stdout"
[[ -s $WORK/help.err ]] && fail "udm-mount --help wrote to stderr: $(cat "$WORK/help.err")"
"$UDM_BIN" snapshot create --help >"$WORK/help.out" 2>"$WORK/help.err" || fail "udm snapshot create --help exited $?"
grep -q -- "--chunk-size" "$WORK/help.out" || fail "udm snapshot create --help printed no options on stdout"
[[ -s $WORK/help.err ]] && fail "udm snapshot create --help wrote to stderr"
true
