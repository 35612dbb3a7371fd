#!/usr/bin/env bash
# The floor for scale-peers.sh: ideal-responder.c (answers every OPEN at once, does
# nothing else) in netns "sr" on 10.200.0.1; prints its PID.
set -euo pipefail
SRC=${SHARED_BENCH:-$(cd "$(dirname "$0")/../../shared/bench" && pwd)}
[ -x /tmp/ideal-responder ] && [ /tmp/ideal-responder -nt "$SRC/ideal-responder.c" ] ||
  gcc -O2 -o /tmp/ideal-responder "$SRC/ideal-responder.c"
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"
ip netns exec sr /tmp/ideal-responder 10.200.0.1 >/tmp/scalelab/ir.log 2>&1 &
echo $!
sleep 0.3
