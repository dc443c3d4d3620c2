#!/usr/bin/env bash
# NBD URIs that cannot be used are refused by `udm create` (and `udm load`) with one line that
# names the URI and the cause: a URI libnbd cannot parse, a refused connection, a socket that
# is not there, an export the server does not have, TLS the server does not speak, an export
# too small for the table. Nothing is created, a live table is untouched, and the server is
# left with no connection from udm.
source "$(dirname "$0")/functions.sh"

SOCKET=$TESTDIR/named.sock
# Serves only the export "disk" (8 MiB); any other name is refused at the handshake.
start_nbdkit named "$SOCKET" --filter=exportname memory 8M exportname=disk exportname-strict=true
GOOD="nbd+unix:///disk?socket=$SOCKET"
PORT=$(free_port)

start_daemon
udm_ok create live --table "0 8192 linear $GOOD 0"
LIVE=$(disk_file live)
make_pattern "$WORK/p" $((4 * 1024 * 1024)) 3
write_at "$WORK/p" 0 "$LIVE" 0 $((4 * 1024 * 1024)) direct

BEFORE=$(nbd_connections named)

# refused DESCRIPTION URI SECTORS EXPECTED: create and load are refused with one line holding
# the URI and EXPECTED; nothing changes.
refused() {
    local what=$1 uri=$2 sectors=$3 expected=$4 verb
    log "$what"
    for verb in create load; do
        if [[ $verb == create ]]; then
            expect_udm_error "$WORK/err" create bad --table "0 $sectors linear $uri 0"
        else
            expect_udm_error "$WORK/err" load live --table "0 $sectors linear $uri 0"
        fi
        grep -qF -- "$uri" "$WORK/err" || fail "$what ($verb): the URI is not named in: $(cat "$WORK/err")"
        grep -qF -- "$expected" "$WORK/err" || fail "$what ($verb): expected '$expected' in: $(cat "$WORK/err")"
    done
    ! disk_listed bad || fail "$what: disk 'bad' was created"
    [[ ! -e $STATE/bad && -z $(find "$STATE" -name 'bad*') ]] || fail "$what: state was saved for 'bad'"
    udm info live | grep -q 'Tables present: *LIVE$' || fail "$what: a refused table left something loaded: $(udm info live)"
}

refused "a URI libnbd cannot parse" "nbd://[::1/disk" 8192 "unable to parse URI"
refused "nothing listens on the port" "nbd://127.0.0.1:$PORT/disk" 8192 "Connection refused"
refused "no such socket" "nbd+unix:///disk?socket=$TESTDIR/none.sock" 8192 "No such file or directory"
refused "an export the server does not have" "nbd+unix:///other?socket=$SOCKET" 8192 "server has no export named 'other'"
refused "TLS the server does not speak" "nbds+unix:///disk?socket=$SOCKET" 8192 "server refused TLS"
refused "an export too small for the table" "$GOOD" 16385 "is too small: 16384 sectors, table needs 0+16385"

log "the live disk still reads what was written; the server has no connection left from udm"
read_at "$LIVE" 0 $((4 * 1024 * 1024)) direct >"$WORK/back"
expect_same "$WORK/back" 0 "$WORK/p" 0 $((4 * 1024 * 1024)) "live disk"
for ((i = 0; i < 50; i++)); do
    [[ $(nbd_connections named) == "$BEFORE" ]] && break
    sleep 0.1
done
[[ $(nbd_connections named) == "$BEFORE" ]] || fail "the server has $(nbd_connections named) connections, $BEFORE before the refused tables"
udm_ok remove live
expect_no_nbd_clients named
stop_daemon
