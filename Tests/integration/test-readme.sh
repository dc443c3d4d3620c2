#!/usr/bin/env bash
# The README runs as written: every ```sh block, in order, as one root shell script from the
# top of the checkout, with `set -e` (a command that fails fails the test). Blocks right after a
# `<!-- not run: ... -->` line are skipped (the build, tools/demo|test|bench, the benchmarks).
# The README's paths move into this test's temp dir: /run/udm/disks → MNT, /var/tmp → TESTDIR/var,
# /mnt → TESTDIR/fs; `udm daemon` gets --mount and --state-dir, the socket comes from UDM_SOCKET;
# `udm` on PATH is the build under test. At the end the daemon must have exited (the README
# shuts it down) and nothing the README mounted or attached may be left.
source "$(dirname "$0")/functions.sh"

mkdir -p "$TESTDIR/bin" "$TESTDIR/var" "$TESTDIR/fs"
ln -s "$UDM_BIN" "$TESTDIR/bin/udm"

awk '
    /^<!-- not run/ { skip = 1; next }
    /^```sh$/ { inblock = 1; n++; if (!skip) printf "\n# --- README block %d (line %d)\n", n, NR; next }
    /^```$/ && inblock { inblock = 0; skip = 0; next }
    inblock { if (!skip) print; next }
    { skip = 0 }
' "$REPO_ROOT/README.md" >"$WORK/readme.sh"
blocks=$(grep -c '^# --- README block' "$WORK/readme.sh" || true)
((blocks >= 5)) || fail "found only $blocks runnable sh blocks in README.md"
grep -q '^udm daemon' "$WORK/readme.sh" || fail "the README's blocks never start the daemon"
# Running the suite or a build from inside the suite would recurse or take the machine.
if grep -nE '^(tools/(test|demo|bench)|swift build)' "$WORK/readme.sh" >"$WORK/unmarked"; then
    fail "README blocks that build, test or benchmark are not marked '<!-- not run -->': $(cat "$WORK/unmarked")"
fi

sed -i -e "s|/mnt/|$TESTDIR/fs/|g" -e "s|/run/udm/disks|$MNT|g" -e "s|/var/tmp/|$TESTDIR/var/|g" \
    -e "s|^udm daemon|udm daemon --mount $MNT --state-dir $STATE|" "$WORK/readme.sh"

# The README starts the daemon in the background; adopt it for cleanup on any exit (the mount
# lock beside MNT names its pid while it runs).
adopt_readme_daemon() {
    local pid
    pid=$(sed -n 's/^pid \([0-9]*\),.*/\1/p' "$TESTDIR/.mnt.udm-lock" 2>/dev/null || true)
    if [[ -n $pid ]] && pid_alive "$pid"; then
        DAEMON_PID=$pid
        DAEMON_PIDS+=("$pid")
    fi
}
trap 'rc=$?; set +e; adopt_readme_daemon; (exit $rc); _cleanup' EXIT

log "running $blocks README blocks"
rc=0
(cd "$REPO_ROOT" && PATH=$TESTDIR/bin:$PATH timeout -k 10 600 bash -e -o pipefail -x "$WORK/readme.sh") \
    >"$WORK/readme.out" 2>&1 || rc=$?
if ((rc != 0)); then
    tail -n 25 "$WORK/readme.out" >&2
    fail "the README's blocks failed (status $rc); the last lines are above"
fi
grep -qx "hello" "$WORK/readme.out" || fail "the snapshot did not show the file written before it"

log "the README shut the daemon down and left nothing behind"
adopt_readme_daemon
[[ -z $DAEMON_PID ]] || fail "the daemon (pid $DAEMON_PID) still runs after the README's udm shutdown"
is_mounted "$MNT" && fail "the FUSE mount is still there after the README's udm shutdown"
left=$(awk -v d="$TESTDIR/" 'index($2, d) == 1 { print $2 }' /proc/mounts)
[[ -z $left ]] || fail "mounts left by the README: $left"
loops=$(our_loops)
[[ -z $loops ]] || fail "loop devices left by the README: $loops"
true
