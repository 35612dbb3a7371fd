#!/usr/bin/env bash
# Flows across a router failure and its return, hagw versus FRR on the same
# seed-000 topology, same 200 long-lived TCP flows through SNAT'ing routers,
# same cut. hagw: `hagw lab up/fail/heal`. FRR: ../shared/bench/frr-lab.sh plus
# the lab's own server and flow holder (`hagw lab serve-internal`,
# `flows-internal`), masquerade on the routers' uplinks, and the lab's cut: every
# frame on r1's LAN port dropped, forwarded ones included (failover-measure.sh
# drops only the router's own INPUT/OUTPUT, which forwarded flows survive).
# Usage (root, after `cargo build --release -p hagw`): bench/flows.sh [BFD_MS]  (default 50)
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SB=${SHARED_BENCH:-$(cd "$HERE/../../shared/bench" && pwd)}
HAGW=${HAGW_BIN:-$HERE/../target/release/hagw}
MS=${1:-50}
N=${FLOWS:-200}
D=$(mktemp -d /tmp/hagw-flows.XXXXXX)

echo "=== hagw (hagw lab, BFD ${MS} ms x 3, pinning on)"
"$HAGW" lab up --bfd-ms "$MS" --flows "$N" >"$D/up.log" 2>&1 || { cat "$D/up.log"; exit 1; }
"$HAGW" lab fail r1 | grep '^lab-result'
"$HAGW" lab heal r1 | grep '^lab-result'
"$HAGW" lab down >/dev/null 2>&1

echo "=== FRR (frr-lab.sh, BFD ${MS} ms x 3)"
BFD=1 BFD_MS=$MS "$SB/frr-lab.sh" up >/dev/null 2>&1
for r in "fr1 u1" "fr2 u2"; do
  ip netns exec ${r% *} nft -f - <<EOF
table ip flowsnat {
  chain post {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "${r#* }" masquerade
  }
}
EOF
done
pids=()
ip netns exec finet "$HAGW" lab serve-internal --listen 203.0.113.1:8080 --ready "$D/server.ready" >"$D/server.log" 2>&1 &
pids+=($!)
both() { ip -n fhost route show default | grep -q "via 192.168.100.20" && ip -n fhost route show default | grep -q "via 192.168.100.21"; }
one() { ! ip -n fhost route show default | grep -q "via 192.168.100.20"; }
for _ in $(seq 300); do both && [ -e "$D/server.ready" ] && break; sleep 0.1; done
ip netns exec fhost "$HAGW" lab flows-internal --target 203.0.113.1:8080 --count "$N" \
  --socket "$D/flows.sock" --ready "$D/flows.ready" >"$D/flows.log" 2>&1 &
pids+=($!)
for _ in $(seq 300); do [ -e "$D/flows.ready" ] && break; sleep 0.1; done
sleep 3
report() { # -> "r1_open r2_open broken_r1 broken_r2" among flows that were open before ($1 = ids file or -)
  echo flows | nc -U -q1 "$D/flows.sock" | python3 -c '
import json, sys
d = json.load(sys.stdin)
ok = lambda f: f["state"] == "open" and (f.get("echo_age_ms") or 0) < 2500
via = {"198.51.100.1": "r1", "198.51.100.5": "r2"}
print(json.dumps({str(f["id"]): [via.get(str(f.get("seen_as")), "?"), ok(f)] for f in d["flows"]}))'
}
diff_report() { # before after -> counts
  python3 -c '
import json, sys
b, a = json.loads(sys.argv[1]), json.loads(sys.argv[2])
was = {i: v[0] for i, v in b.items() if v[1]}
for r in ("r1", "r2"):
    ids = [i for i, v in was.items() if v == r]
    print(f"{r}: {sum(1 for i in ids if not a[i][1])} of {len(ids)}", end="  ")
print()' "$1" "$2"
}
cut() { ip netns exec fr1 nft -f - <<'EOF'
table netdev flowcut {
  chain i {
    type filter hook ingress device "eth1" priority -500; policy drop;
  }
}
table inet flowcut2 {
  chain o {
    type filter hook output priority -300; policy accept;
    oifname "eth1" drop
  }
  chain f {
    type filter hook forward priority -300; policy accept;
    oifname "eth1" drop
  }
}
EOF
}
heal() { ip netns exec fr1 nft delete table netdev flowcut; ip netns exec fr1 nft delete table inet flowcut2; }
b=$(report)
t0=$(date +%s%N); cut
for _ in $(seq 6000); do one && break; sleep 0.005; done
t1=$(date +%s%N); sleep 5
echo "frr fail: failover_ms=$(( (t1 - t0) / 1000000 )) broken: $(diff_report "$b" "$(report)")"
b=$(report)
t0=$(date +%s%N); heal
for _ in $(seq 6000); do both && break; sleep 0.005; done
t1=$(date +%s%N); sleep 5
echo "frr heal: heal_ms=$(( (t1 - t0) / 1000000 )) broken: $(diff_report "$b" "$(report)")"
for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
sleep 0.5
"$SB/frr-lab.sh" down >/dev/null 2>&1
rm -rf "$D"
