# Shared helpers for udm integration tests. Source it first thing:
#
#   source "$(dirname "$0")/functions.sh"
#
# It gives each test a private temp dir (mount dir, state dir, control socket, images),
# starts/stops the daemon, makes images and patterns, compares byte ranges, attaches loop
# devices, and installs an EXIT trap that always tears everything down (filesystems mounted
# from our loops, the loops, the FUSE mount, the daemon, the temp dir), even on failure.
#
# Environment: UDM_BIN (the udm binary; default REPO/.build/debug/udm),
#              UDM_KEEP_TMP=1 keeps the temp dir after the test (for debugging).

set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
UDM_BIN=${UDM_BIN:-$REPO_ROOT/.build/debug/udm}
TEST_NAME=$(basename "$0" .sh)

if [[ $EUID -ne 0 ]]; then
    echo "FAIL: $TEST_NAME needs root (loop devices, mount)" >&2
    exit 1
fi
if [[ ! -x $UDM_BIN ]]; then
    echo "FAIL: udm binary not found at $UDM_BIN (build it, or set UDM_BIN)" >&2
    exit 1
fi
UDM_BIN=$(realpath "$UDM_BIN")

# tools/test points UDM_TEST_TMPROOT at a directory of its own, so it can check what a test
# leaves behind without touching tests that run at the same time
TESTDIR=$(mktemp -d "${UDM_TEST_TMPROOT:-/tmp}/udm-test.$TEST_NAME.XXXXXX")
MNT=$TESTDIR/mnt          # the daemon's FUSE mount: MNT/NAME per disk
STATE=$TESTDIR/state      # the daemon's state dir
SOCK=$TESTDIR/control.sock
IMG=$TESTDIR/img          # image files
WORK=$TESTDIR/work        # patterns, outputs, fs mount points
DAEMON_LOG=$TESTDIR/daemon.log
mkdir -p "$MNT" "$STATE" "$IMG" "$WORK"
export UDM_SOCKET=$SOCK   # every client verb uses it unless given --socket

DAEMON_PID=
DAEMON_PIDS=()            # every daemon we started (cleanup kills the ones still alive)
BG_PIDS=()                # background helpers (writers, readers) to kill on exit
LOOP_LIST=$TESTDIR/loops  # a file, so attach_loop works inside $(...)
: >"$LOOP_LIST"

# ---------------------------------------------------------------------------------------------
# Messages

fail() {
    echo "FAIL: $*" >&2
    exit 1
}

log() {
    echo "--- $*" >&2
}

# ---------------------------------------------------------------------------------------------
# The client. Every call is bounded so a wedged daemon can't hang a test.

udm() {
    timeout -k 5 30 "$UDM_BIN" "$@"
}

# udm_ok CMD...: run a udm verb that must succeed; on failure print its stderr and fail.
udm_ok() {
    local err=$WORK/udm_ok.err
    if ! udm "$@" 2>"$err"; then
        fail "udm $* failed: $(cat "$err")"
    fi
}

# expect_udm_error OUTFILE CMD...: the verb must fail (non-zero) with exactly one line on
# stderr; the line is left in OUTFILE.
expect_udm_error() {
    local out=$1
    shift
    local rc=0
    udm "$@" >"$WORK/expect_err.stdout" 2>"$out" || rc=$?
    ((rc != 0)) || fail "udm $* succeeded, expected an error"
    ((rc != 124 && rc != 137)) || fail "udm $* timed out"
    local n
    n=$(grep -c '' "$out" || true)
    [[ $n == 1 ]] || fail "udm $* printed $n lines on stderr, expected one: $(cat "$out")"
}

# ---------------------------------------------------------------------------------------------
# Processes

# pid_alive PID: true if the process exists and is not a zombie.
pid_alive() {
    local pid=$1 st
    [[ -n $pid && -r /proc/$pid/stat ]] || return 1
    st=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -c1) || return 1
    [[ -n $st && $st != Z && $st != X ]]
}

# wait_gone PID SECONDS: wait until PID has exited; false on timeout.
wait_gone() {
    local pid=$1 secs=$2 i
    for ((i = 0; i < secs * 10; i++)); do
        pid_alive "$pid" || return 0
        sleep 0.1
    done
    ! pid_alive "$pid"
}

# track_pid PID: kill it on exit if it is still running.
track_pid() {
    BG_PIDS+=("$1")
}

# ---------------------------------------------------------------------------------------------
# Mounts

# mount_count DIR: how many entries /proc/mounts has at DIR.
mount_count() {
    awk -v d="$1" '$2 == d { n++ } END { print n + 0 }' /proc/mounts
}

is_mounted() {
    [[ $(mount_count "$1") -gt 0 ]]
}

# fuse_mount_live: the FUSE mount is there and answers (a stale mount gives ENOTCONN).
fuse_mount_live() {
    is_mounted "$MNT" && timeout 5 ls "$MNT" >/dev/null 2>&1
}

# ---------------------------------------------------------------------------------------------
# The daemon

# start_daemon [EXTRA ARGS...]: start `udm daemon --foreground` in the background on this
# test's mount/state/socket; wait (up to 20 s) until `udm ls` answers and the mount is live.
start_daemon() {
    pid_alive "$DAEMON_PID" && fail "start_daemon: a daemon (pid $DAEMON_PID) is already running"
    is_mounted "$MNT" || mkdir -p "$MNT"    # (a stale mount after kill -9 can't be stat'ed)
    echo "=== udm daemon --foreground $* ($(date +%T.%N))" >>"$DAEMON_LOG"
    # UDM_TRANSPORT (tools/test --transport): the FUSE transport every test's daemon uses.
    "$UDM_BIN" daemon --foreground --mount "$MNT" --state-dir "$STATE" --socket "$SOCK" \
        ${UDM_TRANSPORT:+--transport "$UDM_TRANSPORT"} "$@" \
        </dev/null >>"$DAEMON_LOG" 2>&1 &
    DAEMON_PID=$!
    DAEMON_PIDS+=("$DAEMON_PID")
    local i
    for ((i = 0; i < 200; i++)); do
        if ! pid_alive "$DAEMON_PID"; then
            local rc=0
            wait "$DAEMON_PID" 2>/dev/null || rc=$?
            DAEMON_PID=
            tail -n 30 "$DAEMON_LOG" >&2
            fail "daemon exited during start-up (status $rc)"
        fi
        if timeout 5 "$UDM_BIN" ls >/dev/null 2>&1 && fuse_mount_live; then
            return 0
        fi
        sleep 0.1
    done
    tail -n 30 "$DAEMON_LOG" >&2
    local why="udm ls: $(timeout 5 "$UDM_BIN" ls 2>&1 >/dev/null | head -n 1)"
    why+="; $(mount_count "$MNT") mount(s) at $MNT"
    why+="; ls $MNT: $(timeout 5 ls "$MNT" 2>&1 >/dev/null | head -n 1)"
    fail "daemon not ready after 20 s ($why)"
}

# stop_daemon: `udm shutdown`, which must stop the daemon cleanly (exit 0, mount gone).
stop_daemon() {
    [[ -n $DAEMON_PID ]] || fail "stop_daemon: no daemon"
    local pid=$DAEMON_PID rc=0
    udm shutdown >"$WORK/shutdown.out" 2>&1 || rc=$?
    if ((rc != 0)); then
        fail "udm shutdown failed (status $rc): $(cat "$WORK/shutdown.out")"
    fi
    if ! wait_gone "$pid" 20; then
        kill -TERM "$pid" 2>/dev/null || true
        wait_gone "$pid" 5 || kill -KILL "$pid" 2>/dev/null || true
        fail "daemon (pid $pid) still running 20 s after udm shutdown"
    fi
    rc=0
    wait "$pid" 2>/dev/null || rc=$?
    DAEMON_PID=
    ((rc == 0)) || fail "daemon exited with status $rc after udm shutdown"
    is_mounted "$MNT" && fail "FUSE mount $MNT still present after udm shutdown"
    return 0
}

# kill9_daemon: SIGKILL the daemon; its FUSE mount stays behind, stale (that's the point).
kill9_daemon() {
    [[ -n $DAEMON_PID ]] || fail "kill9_daemon: no daemon"
    kill -KILL "$DAEMON_PID"
    wait_gone "$DAEMON_PID" 10 || fail "daemon (pid $DAEMON_PID) survived kill -9"
    wait "$DAEMON_PID" 2>/dev/null || true
    DAEMON_PID=
}

# ---------------------------------------------------------------------------------------------
# Images and patterns

# make_image NAME SIZE: a sparse image file IMG/NAME of SIZE (truncate syntax: 8M, 1G, ...);
# prints its path.
make_image() {
    local f=$IMG/$1
    rm -f "$f"
    truncate -s "$2" "$f"
    echo "$f"
}

# make_pattern FILE LEN [SEED]: a deterministic pseudo-random pattern of LEN bytes.
make_pattern() {
    local f=$1 len=$2 seed=${3:-1}
    if command -v openssl >/dev/null 2>&1; then
        openssl enc -aes-128-ctr -nosalt -pbkdf2 -pass "pass:udm-$seed" </dev/zero 2>/dev/null |
            head -c "$len" >"$f" || true
    else
        awk -v n="$len" -v seed="$seed" 'BEGIN {
            srand(seed); lines = int(n / 64) + 1
            for (i = 0; i < lines; i++) {
                s = ""; for (j = 0; j < 8; j++) s = s sprintf("%08x", int(rand() * 4294967296))
                print substr(s, 1, 63)
            } }' | head -c "$len" >"$f" || true
    fi
    [[ $(stat -c %s "$f") == "$len" ]] || fail "make_pattern $f $len: short file"
}

# fill_image FILE SEED: overwrite the whole file with a pattern (keeps its size).
fill_image() {
    local f=$1 seed=$2 size
    size=$(stat -c %s "$f")
    make_pattern "$WORK/fill.$seed" "$size" "$seed"
    dd if="$WORK/fill.$seed" of="$f" bs=1M conv=notrunc status=none
    rm -f "$WORK/fill.$seed"
}

# write_at SRC SRCOFF DST DSTOFF LEN [DD OFLAGS]: copy LEN bytes from SRC@SRCOFF to DST@DSTOFF
# (byte offsets, no truncation, fsync at the end). Extra oflags e.g. "direct".
write_at() {
    local src=$1 soff=$2 dst=$3 doff=$4 len=$5 of=${6:-}
    dd if="$src" of="$dst" bs=1M iflag=skip_bytes,count_bytes oflag=seek_bytes${of:+,$of} \
        skip="$soff" seek="$doff" count="$len" conv=notrunc,fsync status=none
}

# read_at FILE OFF LEN [DD IFLAGS]: LEN bytes of FILE at byte offset OFF, to stdout.
read_at() {
    local f=$1 off=$2 len=$3 fl=${4:-}
    dd if="$f" bs=1M iflag=skip_bytes,count_bytes${fl:+,$fl} skip="$off" count="$len" status=none
}

# expect_same FILE1 OFF1 FILE2 OFF2 LEN [WHAT]: the byte ranges are equal.
expect_same() {
    local f1=$1 o1=$2 f2=$3 o2=$4 len=$5 what=${6:-}
    local out
    if ! out=$(cmp -n "$len" -i "$o1:$o2" "$f1" "$f2" 2>&1); then
        fail "${what:+$what: }$f1@$o1 != $f2@$o2 (len $len): $out"
    fi
}

# expect_zero FILE OFF LEN [WHAT]: the byte range is all zeros.
expect_zero() {
    local f=$1 o=$2 len=$3 what=${4:-}
    local out
    if ! out=$(cmp -n "$len" -i "$o:0" "$f" /dev/zero 2>&1); then
        fail "${what:+$what: }$f@$o (len $len) is not all zeros: $out"
    fi
}

# sha FILE: its sha256.
sha() {
    sha256sum "$1" | cut -d' ' -f1
}

# normalise_table: drop comments and blank lines, squeeze spaces (stdin → stdout).
normalise_table() {
    sed -e 's/#.*//' -e 's/[[:space:]]\+/ /g' -e 's/^ //' -e 's/ $//' | grep -v '^$' || true
}

# expect_table NAME TABLE: `udm table NAME` equals TABLE (normalised).
expect_table() {
    local name=$1 want got
    want=$(printf '%s\n' "$2" | normalise_table)
    got=$(udm table "$name" | normalise_table) || fail "udm table $name failed"
    [[ $got == "$want" ]] || fail "udm table $name: got [$got], want [$want]"
}

# disk_listed NAME: `udm ls` has a line whose first word is NAME.
disk_listed() {
    local out
    out=$(udm ls) || fail "udm ls failed"
    awk -v n="$1" '$1 == n || $1 == n ":" { f = 1 } END { exit !f }' <<<"$out"
}

# disk_file NAME: MNT/NAME.
disk_file() {
    echo "$MNT/$1"
}

# expect_size FILE BYTES
expect_size() {
    local got
    got=$(stat -c %s "$1") || fail "stat $1"
    [[ $got == "$2" ]] || fail "size of $1 is $got, expected $2"
}

# ---------------------------------------------------------------------------------------------
# Loop devices

# attach_loop FILE: attach with direct I/O, record it for cleanup, print the device.
attach_loop() {
    local dev
    dev=$(losetup --direct-io=on --find --show "$1") || fail "losetup $1 failed"
    echo "$dev" >>"$LOOP_LIST"
    echo "$dev"
}

# detach_loop DEV
detach_loop() {
    losetup -d "$1" || fail "losetup -d $1 failed"
    local tmp=$LOOP_LIST.tmp
    grep -vxF "$1" "$LOOP_LIST" >"$tmp" || true
    mv "$tmp" "$LOOP_LIST"
}

# our_loops: loops we recorded plus any loop whose backing file lives in TESTDIR.
our_loops() {
    {
        cat "$LOOP_LIST" 2>/dev/null || true
        losetup -n -l -O NAME,BACK-FILE 2>/dev/null |
            awk -v d="$TESTDIR/" 'index($2, d) == 1 { print $1 }' || true
    } | sort -u
}

# ---------------------------------------------------------------------------------------------
# NBD servers (nbdkit), for tables over NBD. Each is stopped on exit, after the daemon, so the
# daemon's last flushes still reach it.

# start_nbdkit NAME ENDPOINT ARGS...: `nbdkit -f ARGS` (plugin, its arguments, filters) serving
# on ENDPOINT: a Unix socket path (starts with /) or a TCP port on 127.0.0.1. Returns once it
# listens (its pid file exists). Its pid is in $TESTDIR/nbd.NAME.pid, its log in $TESTDIR/nbd.NAME.log.
start_nbdkit() {
    local name=$1 endpoint=$2 i
    shift 2
    command -v nbdkit >/dev/null || fail "nbdkit is not installed"
    local pidfile=$TESTDIR/nbd.$name.pid listen
    rm -f "$pidfile"
    if [[ $endpoint == /* ]]; then
        rm -f "$endpoint"
        listen=(--unix "$endpoint")
    else
        listen=(-i 127.0.0.1 -p "$endpoint")
    fi
    echo "=== nbdkit ${listen[*]} $* ($(date +%T.%N))" >>"$TESTDIR/nbd.$name.log"
    nbdkit -f "${listen[@]}" --pidfile "$pidfile" "$@" </dev/null >>"$TESTDIR/nbd.$name.log" 2>&1 &
    disown
    for ((i = 0; i < 100; i++)); do
        [[ -s $pidfile ]] && return 0
        sleep 0.1
    done
    tail -n 5 "$TESTDIR/nbd.$name.log" >&2
    fail "nbdkit $name did not start listening on $endpoint"
}

# start_qemu_nbd NAME SOCKET IMAGE: qemu-nbd serving the raw IMAGE on the Unix SOCKET, for up to
# 8 clients at once; returns once it listens. Stopped on exit like the nbdkit servers.
start_qemu_nbd() {
    local name=$1 socket=$2 image=$3
    command -v qemu-nbd >/dev/null || fail "qemu-nbd is not installed (qemu-utils)"
    rm -f "$socket" "$TESTDIR/nbd.$name.pid"
    qemu-nbd --fork --persistent --shared=8 --format=raw --cache=none --socket="$socket" \
        --pid-file="$TESTDIR/nbd.$name.pid" "$image" </dev/null >>"$TESTDIR/nbd.$name.log" 2>&1 ||
        fail "qemu-nbd $name did not start: $(tail -n 3 "$TESTDIR/nbd.$name.log")"
}

# nbd_pid NAME: the pid of server NAME.
nbd_pid() {
    cat "$TESTDIR/nbd.$1.pid"
}

# nbd_connections NAME: how many client connections server NAME has open now.
nbd_connections() {
    local sockets
    sockets=$(find "/proc/$(nbd_pid "$1")/fd" -lname 'socket:*' 2>/dev/null | wc -l)
    echo $((sockets - 1))    # its listening socket
}

# expect_no_nbd_clients NAME: server NAME's client connections all close (within 10 s).
expect_no_nbd_clients() {
    local i
    for ((i = 0; i < 100; i++)); do
        [[ $(nbd_connections "$1") == 0 ]] && return 0
        sleep 0.1
    done
    fail "nbdkit $1 still has $(nbd_connections "$1") client connection(s)"
}

# stop_nbdkit NAME: kill server NAME (SIGKILL: it gets no chance to say goodbye) and wait for it.
stop_nbdkit() {
    local pid
    pid=$(nbd_pid "$1")
    kill -KILL "$pid" 2>/dev/null || true
    wait_gone "$pid" 10 || fail "nbdkit $1 (pid $pid) did not exit"
    rm -f "$TESTDIR/nbd.$1.pid"
}

# free_port: a TCP port on 127.0.0.1 nothing listens on.
free_port() {
    local port i
    for ((i = 0; i < 100; i++)); do
        port=$((20000 + RANDOM % 40000))
        [[ -z $(ss -Hltn "sport = :$port" 2>/dev/null) ]] && { echo "$port"; return 0; }
    done
    fail "no free TCP port found"
}

# _cleanup_nbd STAGE: continue (cont) stopped servers so nothing blocks on them, or kill (kill) them all.
_cleanup_nbd() {
    local pidfile pid
    for pidfile in "$TESTDIR"/nbd.*.pid; do
        [[ -s $pidfile ]] || continue
        pid=$(cat "$pidfile")
        pid_alive "$pid" || continue
        if [[ $1 == cont ]]; then
            kill -CONT "$pid" 2>/dev/null
        else
            kill -KILL "$pid" 2>/dev/null
            wait_gone "$pid" 5
        fi
    done
}

# ---------------------------------------------------------------------------------------------
# Cleanup (EXIT trap): always runs; never fails; never leaves a mount or loop behind.

_cleanup_umount() {
    local dir=$1
    timeout -k 2 10 umount "$dir" 2>/dev/null || umount -l "$dir" 2>/dev/null || true
}

_cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    local pid loop dir i
    _cleanup_nbd cont

    # 1. background helpers (subshells running a function: their children too)
    local kids=()
    for pid in "${BG_PIDS[@]}"; do
        pid_alive "$pid" || continue
        kids+=($(ps -o pid= --ppid "$pid" 2>/dev/null))
        kill -TERM "$pid" 2>/dev/null
    done
    for pid in "${kids[@]}"; do
        pid_alive "$pid" && kill -TERM "$pid" 2>/dev/null
    done
    for pid in "${BG_PIDS[@]}" "${kids[@]}"; do
        wait_gone "$pid" 3 || kill -KILL "$pid" 2>/dev/null
    done

    # 2. a healthy daemon: resume everything, so nothing below blocks on held I/O.
    #    An unhealthy one: kill it now, so I/O to its mount fails instead of hanging.
    if pid_alive "$DAEMON_PID" && timeout 5 "$UDM_BIN" ls >"$WORK/cleanup.ls" 2>/dev/null; then
        while read -r name _; do
            [[ -n $name ]] && timeout 5 "$UDM_BIN" resume "$name" >/dev/null 2>&1
        done <"$WORK/cleanup.ls"
    else
        for pid in "${DAEMON_PIDS[@]}"; do
            pid_alive "$pid" && kill -KILL "$pid" 2>/dev/null
        done
    fi

    # 3. filesystems: the ones mounted from our loops, then anything under TESTDIR except
    #    the FUSE mount (deepest first)
    for loop in $(our_loops); do
        for dir in $(findmnt -rn -S "$loop" -o TARGET 2>/dev/null); do
            _cleanup_umount "$dir"
        done
    done
    for dir in $(awk -v d="$TESTDIR/" -v m="$MNT" 'index($2, d) == 1 && $2 != m { print $2 }' \
        /proc/mounts | sort -r); do
        _cleanup_umount "$dir"
    done

    # 4. loops
    for loop in $(our_loops); do
        timeout -k 2 10 losetup -d "$loop" 2>/dev/null
    done

    # 5. the daemon: clean shutdown if it answers, else by PID
    if pid_alive "$DAEMON_PID"; then
        timeout -k 2 10 "$UDM_BIN" shutdown >/dev/null 2>&1
        wait_gone "$DAEMON_PID" 5
    fi
    for pid in "${DAEMON_PIDS[@]}"; do
        if pid_alive "$pid"; then
            kill -TERM "$pid" 2>/dev/null
            wait_gone "$pid" 5 || kill -KILL "$pid" 2>/dev/null
            wait_gone "$pid" 5
        fi
    done

    _cleanup_nbd kill

    # 6. the FUSE mount (may be stale after kill -9)
    for ((i = 0; i < 5; i++)); do
        is_mounted "$MNT" || break
        fusermount3 -u "$MNT" 2>/dev/null || fusermount3 -uz "$MNT" 2>/dev/null ||
            umount -l "$MNT" 2>/dev/null
    done
    # anything else still under TESTDIR
    for dir in $(awk -v d="$TESTDIR/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r); do
        umount -l "$dir" 2>/dev/null
    done
    # loops detached lazily above may have lingered while their fs was busy
    for loop in $(our_loops); do
        losetup -d "$loop" 2>/dev/null
    done

    # 7. report and remove the temp dir
    if ((rc != 0)) && [[ -s $DAEMON_LOG ]]; then
        echo "--- daemon log (last 40 lines) ---" >&2
        tail -n 40 "$DAEMON_LOG" >&2
    fi
    if [[ ${UDM_KEEP_TMP:-0} == 1 ]]; then
        echo "kept $TESTDIR" >&2
    elif awk -v d="$TESTDIR/" 'index($2, d) == 1 { f = 1 } END { exit !f }' /proc/mounts; then
        echo "WARNING: something is still mounted under $TESTDIR; not removing it" >&2
    else
        rm -rf --one-file-system "$TESTDIR"
    fi
    if ((rc == 0)); then
        echo "PASS: $TEST_NAME"
    fi
    exit "$rc"
}
trap _cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
