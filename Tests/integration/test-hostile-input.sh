#!/usr/bin/env bash
# Hostile input never hurts the daemon: malformed JSON, random bytes, a 64 MiB line, half a
# request (closed, or held open), invalid UTF-8, deep nesting and wrong types each get an error
# answer (or the connection closed) and `udm ls` keeps working; a table the fuzzer found
# crashing the daemon is refused; 50 clients creating, reloading
# and removing disks at once leave a registry that matches what they did, also after a restart;
# I/O racing suspends, reloads and a forced remove never takes the daemon down.
source "$(dirname "$0")/functions.sh"

start_daemon
udm_ok create keep --table "0 2048 zero"

log "malformed, random, oversized and truncated requests"
python3 - "$SOCK" >"$WORK/hostile.out" 2>&1 <<'EOF' || fail "hostile requests: $(cat "$WORK/hostile.out")"
import json, os, random, socket, sys, time

path = sys.argv[1]
random.seed(7)

def exchange(payload, close_write=True, timeout=30):
    """Sends payload; returns the answer (b"" if the daemon closed without one)."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(path)
    try:
        s.sendall(payload)
        if close_write:
            s.shutdown(socket.SHUT_WR)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the daemon stopped reading: fine, as long as it keeps serving
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    s.close()
    return data

def expect_refused(what, payload, **options):
    answer = exchange(payload, **options)
    if answer:
        reply = json.loads(answer)
        assert reply["ok"] is False and reply["error"], (what, reply)
        assert len(reply["error"]) < 300, (what, "an error of %d bytes" % len(reply["error"]))
        print("%-28s %s" % (what, reply["error"]))
    else:
        print("%-28s connection closed" % what)
    # The daemon still answers a good request.
    reply = json.loads(exchange(b'{"verb":"ls"}\n'))
    assert reply["ok"] and reply["output"].startswith("keep"), (what, reply)

expect_refused("empty line", b"\n")
expect_refused("not JSON", b"hello daemon\n")
expect_refused("malformed JSON", b'{"verb": "ls",,}\n')
expect_refused("unknown verb", b'{"verb": "format-disk"}\n')
expect_refused("wrong types", b'{"verb": "create", "name": 5, "table": ["0 1 zero"]}\n')
expect_refused("missing name", b'{"verb": "remove"}\n')
expect_refused("invalid UTF-8", b'{"verb": "info", "name": "\xff\xfe"}\n')
expect_refused("deep nesting", b"[" * 500000 + b"\n")
expect_refused("long disk name", json.dumps({"verb": "create", "name": "n" * 500000, "table": "0 1 zero"}).encode() + b"\n")
expect_refused("half a request, closed", b'{"verb": "create", "name": "half", "tab')
for i in range(20):
    junk = bytes(random.getrandbits(8) for _ in range(random.randint(1, 8192)))
    expect_refused("random bytes %d" % i, junk + (b"\n" if i % 2 else b""))
start = time.time()
expect_refused("64 MiB line", b"a" * (64 << 20) + b"\n")
print("64 MiB line answered in %.1f s" % (time.time() - start))
# Connections that say nothing and go away.
for _ in range(50):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.close()
expect_refused("silent connections", b'{"verb": "remove", "name": "nothing-here"}\n')
EOF
cat "$WORK/hostile.out" >&2
pid_alive "$DAEMON_PID" || fail "the daemon died"

log "tables the fuzzer found crashing the daemon are refused"
expect_udm_error "$WORK/err" create huge --table "0 30 striped 8888888888888888880 3"
grep -q "stripes need more than" "$WORK/err" || fail "unexpected error for a huge stripe count: $(cat "$WORK/err")"
pid_alive "$DAEMON_PID" || fail "a huge stripe count killed the daemon"

log "half a request held open does not block other clients; the daemon gives up on it"
python3 - "$SOCK" "$WORK/held.out" <<'EOF' &
import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(b'{"verb": "ls"')
start = time.time()
s.settimeout(60)
answer = s.recv(65536)
open(sys.argv[2], "w").write("%.1f %s" % (time.time() - start, answer.decode()))
EOF
HELD=$!
track_pid "$HELD"
sleep 0.5
for i in 1 2 3; do
    disk_listed keep || fail "udm ls does not answer while a client holds half a request"
done
wait_gone "$HELD" 40 || fail "the daemon never gave up on a half request"
wait "$HELD" || fail "the half-request client failed"
grep -q '"ok":false' "$WORK/held.out" || fail "no error answer to a half request: $(cat "$WORK/held.out")"
log "half request answered after $(cut -d' ' -f1 "$WORK/held.out") s"

log "idle clients are capped at 128 connections; one more is told the daemon is busy"
python3 - "$SOCK" "$WORK/cap.out" <<'EOF' || fail "connection cap: $(cat "$WORK/cap.out")"
import socket, sys, time
held = []
for _ in range(128):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    held.append(s)
time.sleep(0.5)
extra = socket.socket(socket.AF_UNIX)
extra.connect(sys.argv[1])
try:
    extra.sendall(b'{"verb": "ls"}\n')
except BrokenPipeError:
    pass  # the daemon may answer "busy" and close before the request is sent
extra.settimeout(5)
answer = extra.recv(65536).decode()
for s in held:
    s.close()
open(sys.argv[2], "w").write(answer)
sys.exit(0 if '"ok":false' in answer and "busy" in answer else 1)
EOF
for i in 1 2 3 4 5 6 7 8 9 10; do disk_listed keep && break; sleep 0.5; done
disk_listed keep || fail "udm ls does not answer after the idle clients left"

log "50 clients creating, reloading and removing disks at once"
A=$(make_image a.img 4M)
# client I: creates cI, reloads it three times (load + resume, with reads checking the size),
# then removes it if I is even; every client also tries to create the same disk "contended".
client() {
    local i=$1 n
    udm create "c$i" --table "0 $((64 + i)) zero" || return 1
    for n in 1 2 3; do
        udm load "c$i" --table "0 $((100 * n + i)) linear $A $n" || return 1
        udm resume "c$i" || return 1
        [[ $(stat -c %s "$MNT/c$i") == $(((100 * n + i) * 512)) ]] || return 1
    done
    udm create contended --table "0 8 zero" 2>/dev/null && echo "$i" >"$WORK/contended.$i"
    if ((i % 2 == 0)); then udm remove "c$i" || return 1; fi
    return 0
}
pids=()
for i in $(seq 0 49); do
    client "$i" >"$WORK/client.$i.log" 2>&1 &
    pids+=($!)
    track_pid "$!"
done
for i in $(seq 0 49); do
    wait "${pids[$i]}" || fail "client $i failed: $(cat "$WORK/client.$i.log")"
done
winners=$(ls "$WORK" | grep -c '^contended\.' || true)
((winners == 1)) || fail "$winners clients created the same disk 'contended'"

# expect_registry: exactly keep, contended and the odd clients' disks, with their last tables,
# active, each with its file on the mount.
expect_registry() {
    local want got i
    want=$( (echo keep; echo contended; for i in $(seq 1 2 49); do echo "c$i"; done) | sort)
    got=$(udm ls | awk '{ print $1 }' | sort)
    [[ $got == "$want" ]] || fail "$1: udm ls lists [$(echo $got)], expected [$(echo $want)]"
    got=$(ls "$MNT" | sort)
    [[ $got == "$want" ]] || fail "$1: the mount holds [$(echo $got)], expected [$(echo $want)]"
    for i in $(seq 1 2 49); do
        expect_table "c$i" "0 $((300 + i)) linear $A 3"
        udm info "c$i" | grep -q 'State: *ACTIVE' || fail "$1: c$i is not active"
    done
}
expect_registry "after the clients"

log "the saved registry is the same after a restart"
stop_daemon
start_daemon
expect_registry "after a restart"

log "I/O racing suspend/resume, reloads and a forced remove"
B=$(make_image b.img 32M)
udm_ok create io --table "0 65536 linear $B 0"
fio --name=race --filename="$MNT/io" --rw=randrw --bs=4k --direct=1 --numjobs=4 --ioengine=psync \
    --size=32M --time_based --runtime=30 >"$WORK/fio.log" 2>&1 &
F=$!
track_pid "$F"
sleep 0.5
for n in $(seq 1 15); do
    udm_ok suspend io
    udm_ok resume io
    udm_ok load io --table "0 65536 flakey $B 0 1 1 1 error_reads"
    udm_ok resume io
    udm_ok load io --table "0 65536 linear $B 0"
    udm_ok resume io
done
pid_alive "$F" || fail "fio stopped during suspends and reloads: $(tail -n 5 "$WORK/fio.log")"
udm_ok remove --force io
wait_gone "$F" 40 || fail "fio still running 40 s after its disk was removed"
pid_alive "$DAEMON_PID" || fail "the daemon died"
disk_listed keep || fail "udm ls does not answer after the races"
disk_listed io && fail "io is still listed after remove --force"
stop_daemon
