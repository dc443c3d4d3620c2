#!/usr/bin/env bash
# Disks over disks: UPPER linear over MOUNT/LOWER at an offset, TOP over UPPER; writes land in
# the image at the composed offset. A disk another disk is built on can't be removed.
source "$(dirname "$0")/functions.sh"

MiB=$((1024 * 1024))
A=$(make_image a.img 8M)
B=$(make_image b.img 4M)

start_daemon
udm_ok create early --table "0 64 zero"                             # created first, stacked later
udm_ok create lower --table "0 12288 linear $A 2048"             # lower s -> A s+2048
L=$(disk_file lower)
udm_ok create upper --table "0 4096 linear $L 1000"              # upper s -> lower s+1000 -> A s+3048
U=$(disk_file upper)
expect_size "$U" $((4096 * 512))
expect_table upper "0 4096 linear $L 1000"
udm_ok create top --table "0 1024 linear $U 8
1024 1024 linear $B 16"                                           # top s<1024 -> A s+3056
T=$(disk_file top)
expect_size "$T" $((2048 * 512))

make_pattern "$WORK/p" $((2 * MiB)) 31
log "write through upper, lands in A at (3048 + s) sectors"
write_at "$WORK/p" 0 "$U" $((300 * 512)) "$MiB" direct || fail "write through upper failed"
expect_same "$A" $(((3048 + 300) * 512)) "$WORK/p" 0 "$MiB" "upper write in A"
expect_same "$L" $(((1000 + 300) * 512)) "$WORK/p" 0 "$MiB" "upper write read through lower"
expect_same "$U" $((300 * 512)) "$WORK/p" 0 "$MiB" "upper write read through upper"
expect_zero "$A" 0 $(((3048 + 300) * 512)) "A before the write"
expect_zero "$A" $(((3048 + 300) * 512 + MiB)) $((8 * MiB - (3048 + 300) * 512 - MiB)) "A after the write"

log "unaligned write through upper"
write_at "$WORK/p" 4321 "$U" $((3000 * 512 + 77)) 3333 || fail "unaligned write through upper failed"
expect_same "$A" $(((3048 + 3000) * 512 + 77)) "$WORK/p" 4321 3333 "unaligned upper write in A"

log "three levels: top over upper over lower over A, and top's second line over B"
# top sectors 1016..1031: 8 in line 1 (-> A 3056+s), 8 in line 2 (-> B 16+)
write_at "$WORK/p" "$MiB" "$T" $((1016 * 512)) 8192 direct || fail "write through top failed"
expect_same "$A" $(((3056 + 1016) * 512)) "$WORK/p" "$MiB" $((8 * 512)) "top write in A"
expect_same "$B" $((16 * 512)) "$WORK/p" $((MiB + 8 * 512)) $((8 * 512)) "top write in B"
read_at "$T" $((1016 * 512)) 8192 direct >"$WORK/back" || fail "direct read through top failed"
expect_same "$WORK/back" 0 "$WORK/p" "$MiB" 8192 "read back through top"

log "a write to lower is seen through upper"
write_at "$WORK/p" 999 "$L" $((5000 * 512)) 4096 direct || fail "write through lower failed"
expect_same "$U" $((4000 * 512)) "$WORK/p" 999 4096 "lower write seen through upper"

log "restart restores the stack, even when a disk made first now sits on a later one"
udm_ok suspend early
udm_ok load early --table "0 64 linear $T 1016"
udm_ok resume early
expect_same "$MNT/early" 0 "$WORK/p" "$MiB" 8192 "early over top"
cp "$A" "$WORK/a.before"
cp "$U" "$WORK/upper.before"
stop_daemon
start_daemon
for n in early lower upper top; do disk_listed "$n" || fail "$n not restored after restart"; done
expect_table early "0 64 linear $T 1016"
expect_table upper "0 4096 linear $L 1000"
expect_same "$MNT/early" 0 "$WORK/p" "$MiB" 8192 "early over top after restart"
cmp -s "$U" "$WORK/upper.before" || fail "upper reads differently after the restart"
cmp -s "$A" "$WORK/a.before" || fail "image A changed across the restart"
udm_ok remove early

log "lower and upper are in use: remove is refused; top first, then the rest"
expect_udm_error "$WORK/err" remove lower
expect_udm_error "$WORK/err" remove upper
disk_listed lower || fail "lower vanished after a refused remove"
udm_ok remove top
udm_ok remove upper
udm_ok remove lower
stop_daemon
