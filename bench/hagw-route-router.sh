#!/usr/bin/env bash
# Start hagw in netns "ri" as the router under test of ../shared/bench/route-install.sh
# (AS 65000 on 10.203.0.1; one peer 10.203.0.2 in AS 65002 announces N /32s, which
# hagw installs in the kernel); print its PID.
# Usage: route-install.sh 100000 "$PWD/bench/hagw-route-router.sh"
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${HAGW_BIN:-$HERE/../target/release/hagw}
D=/tmp/rilab
cat > $D/hagw.toml <<C
[bgp]
asn = 65000
router_id = "10.203.0.1"
listen = ["10.203.0.1"]

[[bgp.neighbor]]
address = "10.203.0.2"
remote_asn = 65002
passive = true

[kernel]
install = true
pin_connections = false
dhcp_default = "keep"

[control]
socket = "$D/hagw.sock"
C
ip netns exec ri "$BIN" run --config $D/hagw.toml --log warn >$D/hagw.log 2>&1 &
pid=$!
for _ in $(seq 100); do [ -S $D/hagw.sock ] && break; sleep 0.05; done
# The peak RSS (VmHWM) until hagw is stopped, for bench/route-install.sh.
( while h=$(awk '/VmHWM/{print $2}' /proc/$pid/status 2>/dev/null) && [ -n "$h" ]; do
    echo "$h" >$D/hagw.hwm; sleep 0.1; done ) >/dev/null 2>&1 </dev/null &
echo $pid
