#!/usr/bin/env bash
# The bioset allocation model: spin finds no deadlock in the NOWAIT-then-mutex discipline and
# does find the naive policy's (3 threads, pool 2, 2 clones each; and a larger case).
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
"$here/tools/model/check" 3 2 2
"$here/tools/model/check" 4 3 3
