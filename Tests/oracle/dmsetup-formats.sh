# dmsetup's text, run against the kernel (tools: oracle/dmvm, DEV_A=/dev/vda DEV_B=/dev/vdb)
# and against udm (Tests/integration/test-dmsetup-verbs.sh: loop devices, udm's dmsetup).
# POSIX sh (the oracle VM has busybox only). Every command's stdout and stderr, then its status.
# Usage: sh dmsetup-formats.sh DEV_A DEV_B [MAPPER_DIR]   (both devices at least 4 MiB; it
# writes formats.table in the current directory)
A=$1
B=$2
MAPPER=${3:-/dev/mapper}
run() {
    echo "\$ dmsetup $*"
    dmsetup "$@" 2>&1
    echo "rc=$?"
}
run create fl --table "0 8192 flakey $A 0 180 0"
run create er --table "0 4096 error"
run create li --table "0 4096 linear $B 2048"
run ls
run table
run table fl
run table --target flakey
run status
run status fl
run status --target linear
run info fl
run info
run info -c
run info -c -o name,open
run info -c --noheadings -o name,major,minor,open,attr
run info -c -o name,attr,segments,events,uuid
run suspend --nolockfs fl
run info fl
run load fl --table "0 8192 flakey $A 0 0 180 1 drop_writes"
run info fl
run info -c -o name,attr fl
run resume fl
run table fl
run status fl
run wipe_table li
run table li
exec 3<"$MAPPER/er"
run info er
run info -c -o name,open er
run remove er
exec 3<&-
run remove er
run remove nosuch
run info nosuch
run table nosuch
run create fl --table "0 8 error"
run remove_all
run ls
run table
run status
run info
run info -c
echo "0 8 zero" >formats.table
run create z formats.table
echo "0 16 zero" | run create y
run table
rm "$MAPPER/z"
run mknodes
[ -b "$MAPPER/z" ] && echo "mknodes made $MAPPER/z again"
run info -c -o name,suspended,tables_loaded,readahead,blkdevname
run remove_all
