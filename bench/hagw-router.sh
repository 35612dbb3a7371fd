#!/usr/bin/env bash
# Start hagw in netns "sr" as the router under test of ../shared/bench/scale-peers.sh
# (AS 65000 on 10.200.0.1, listen range 10.200.0.0/16, a default to every host); print its PID.
# Usage: scale-peers.sh N "$PWD/bench/hagw-router.sh"   (after `cargo build --release`)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${HAGW_BIN:-$HERE/../target/release/hagw}
D=/tmp/scalelab
cat > $D/hagw.toml <<C
[bgp]
asn = 65000
router_id = "10.200.0.1"
listen = ["10.200.0.1"]

[[bgp.dynamic]]
range = "10.200.0.0/16"
remote_asn = "external"
default_originate = true
limit = 65000

[control]
socket = "$D/hagw.sock"
C
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"
ip netns exec sr "$BIN" run --config $D/hagw.toml --log warn >$D/hagw.log 2>&1 &
pid=$!
# ready when the control socket answers
for _ in $(seq 100); do [ -S $D/hagw.sock ] && break; sleep 0.05; done
echo $pid
