#!/usr/bin/env bash
# VIP failover, hagw pair vs keepalived pair (unicast VRRPv3), timed the same
# way in one run by ../shared/bench/vip-measure.py: the Master is silenced
# (iptables drops its protocol 112 output, as vrrp-failover-measure.sh does)
# and the time runs from the cut command's start until the Backup holds the
# VIP, read as a netlink event. keepalived comes from keepalived-lab.sh
# (kv1 200 / kv2 100, 192.168.200.0/24); hagw runs the same pair in its own
# namespaces (hv1 200 / hv2 100, 192.168.201.0/24). With BFD (hagw only,
# `bfd = true`, [bfd] 10 ms x 3, 1 s adverts) everything the Master sends is
# dropped, BFD included.
# Target: at most the RFC floor, Master_Down_Interval = 3 x interval + skew
# (the Backup's 100: 3.609 x interval), plus 5 ms; with BFD 10 ms x 3, 40 ms.
# Usage (root, after `cargo build --release -p hagw`): bench/vrrp-failover.sh
#   RUNS=20 cuts at 0.1 s adverts and with BFD, RUNS_SLOW=6 at 1 s.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SB=${SHARED_BENCH:-$(cd "$HERE/../../shared/bench" && pwd)}
HAGW=${HAGW_BIN:-$HERE/../target/release/hagw}
RUNS=${RUNS:-20}
RUNS_SLOW=${RUNS_SLOW:-6}
LAB=/tmp/hvlab
OUT=${OUT:-/tmp/vrrp-failover}
mkdir -p "$OUT"

st() { "$HAGW" status --json --socket "$LAB/$1/hagw.sock" 2>/dev/null; }

# hagw_up ADVERT_MS BFD(0|1): two hagw in hv1/hv2 on a bridge in hvs.
hagw_up() {
  local adv=$1 bfd=$2 i
  ip netns add hvs; ip -n hvs link add br0 type bridge; ip -n hvs link set br0 up
  for i in 1 2; do
    ip netns add hv$i; ip -n hv$i link set lo up
    ip link add h$i netns hv$i type veth peer name hp$i netns hvs
    ip -n hvs link set hp$i master br0 up
    ip -n hv$i addr add 192.168.201.$i/24 dev h$i; ip -n hv$i link set h$i up
    mkdir -p $LAB/hv$i
    cat > $LAB/hv$i/hagw.toml <<C
[[vrrp]]
name = "gw"
interface = "h$i"
vrid = 10
priority = $(( i == 1 ? 200 : 100 ))
advert_interval_ms = $adv
peers = ["192.168.201.$(( 3 - i ))"]
virtual_addresses = ["192.168.201.100/24"]
accept = true
bfd = $( ((bfd)) && echo true || echo false )
[bfd]
interval_ms = 10
multiplier = 3
[control]
socket = "$LAB/hv$i/hagw.sock"
C
    ip netns exec hv$i "$HAGW" run --config $LAB/hv$i/hagw.toml --log info >$LAB/hv$i/log 2>&1 &
    echo $! > $LAB/hv$i/pid
  done
}

hagw_down() {
  local i p
  for i in 1 2; do
    p=$(cat $LAB/hv$i/pid 2>/dev/null) && kill "$p" 2>/dev/null
  done
  for i in 1 2; do
    p=$(cat $LAB/hv$i/pid 2>/dev/null) || continue
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null
  done
  for n in hv1 hv2 hvs; do ip netns del $n 2>/dev/null; done
  rm -rf $LAB
}

# hagw_ready BFD: hv1 Master with the VIP, hv2 Backup following it (and its
# BFD session Up).
hagw_ready() {
  local s
  s=$(st hv2) || return 1
  [ "$(jq -r '.vrrp[0].state' <<<"$s")" = Backup ] || return 1
  [ "$(jq -r '.vrrp[0].master' <<<"$s")" = 192.168.201.1 ] || return 1
  if (($1)); then [ "$(jq -r '.bfd[0].state' <<<"$s")" = Up ] || return 1; fi
  ip -n hv1 -o addr | grep -q ' 192.168.201.100/' && ! ip -n hv2 -o addr | grep -q ' 192.168.201.100/'
}

# hagw_runs ADVERT_MS BFD N
hagw_runs() {
  local adv=$1 bfd=$2 n=$3 match='-p 112' k
  ((bfd)) && match=''
  hagw_up "$adv" "$bfd"
  for k in $(seq "$n"); do
    for _ in $(seq 300); do hagw_ready "$bfd" && break; sleep 0.05; done
    hagw_ready "$bfd" || { echo "vip_failover_ms=NA (not ready)"; continue; }
    # A random phase within the advert interval, as a real failure has.
    sleep "0.$(( RANDOM % 10 ))$(( RANDOM % 10 ))"
    python3 "$SB/vip-measure.py" hv2 192.168.201.100 \
      "ip netns exec hv1 iptables -I OUTPUT $match -j DROP"
    ip netns exec hv1 iptables -D OUTPUT $match -j DROP
  done
  jq -c '.vrrp[0] | {state, adverts_in, adverts_out, dropped, vip_latency_ms, last_transition}' <<<"$(st hv2)" >&2
  hagw_down
}

ka_ready() {
  ip -n kv1 -o addr | grep -q ' 192.168.200.100/' && ! ip -n kv2 -o addr | grep -q ' 192.168.200.100/'
}

# ka_runs ADVERT_S N
ka_runs() {
  local k
  "$SB/keepalived-lab.sh" up "$1" >/dev/null 2>&1
  for k in $(seq "$2"); do
    for _ in $(seq 300); do ka_ready && break; sleep 0.05; done
    ka_ready || { echo "vip_failover_ms=NA (not ready)"; continue; }
    sleep 1
    sleep "0.$(( RANDOM % 10 ))$(( RANDOM % 10 ))"
    python3 "$SB/vip-measure.py" kv2 192.168.200.100 \
      "ip netns exec kv1 iptables -I OUTPUT -p 112 -j DROP"
    ip netns exec kv1 iptables -D OUTPUT -p 112 -j DROP
  done
  "$SB/keepalived-lab.sh" down >/dev/null 2>&1
}

summary() { # name target_ms < lines
  python3 -c '
import re, statistics, sys
name, lim = sys.argv[1], float(sys.argv[2])
t = sys.stdin.read()
n = len(re.findall(r"vip_failover_ms=", t))
v = [float(x) for x in re.findall(r"vip_failover_ms=([\d.]+)", t)]
if not v: print(f"{name}: no result"); sys.exit()
print(f"{name}: {len(v)} of {n} cuts; failover min {min(v):.1f} / median {statistics.median(v):.1f} / max {max(v):.1f} ms; "
      f"{sum(x <= lim for x in v)} of {n} within {lim:.0f} ms")
' "$1" "$2"
}

ratio() { # label a_file b_file
  python3 -c '
import re, statistics, sys
m = lambda f: statistics.median(float(x) for x in re.findall(r"vip_failover_ms=([\d.]+)", open(f).read()))
print(f"{sys.argv[1]}: median ratio hagw/keepalived {m(sys.argv[2]) / m(sys.argv[3]):.2f}")
' "$@"
}

hagw_down
"$SB/keepalived-lab.sh" down >/dev/null 2>&1
[ -x "$HAGW" ] || { echo "build hagw first: cargo build --release -p hagw"; exit 1; }

# floor(ms) = 3 x interval + (256 - 100) / 256 x interval, + 5 ms.
for adv in 100 1000; do
  n=$RUNS; ((adv == 1000)) && n=$RUNS_SLOW
  lim=$(python3 -c "print($adv * (3 + 156 / 256) + 5)")
  echo "=== adverts every $adv ms, $n cuts each (target: at most $lim ms)"
  hagw_runs "$adv" 0 "$n" | tee "$OUT/hagw-$adv.txt" | summary "hagw      " "$lim"
  ka_runs "$(python3 -c "print($adv / 1000)")" "$n" | tee "$OUT/keepalived-$adv.txt" | summary "keepalived" "$lim"
  ratio "adverts $adv ms" "$OUT/hagw-$adv.txt" "$OUT/keepalived-$adv.txt"
done
echo "=== hagw, 1 s adverts, bfd = true at 10 ms x 3, $RUNS cuts (everything the Master sends dropped; target 40 ms)"
hagw_runs 1000 1 "$RUNS" | tee "$OUT/hagw-bfd.txt" | summary "hagw bfd  " 40
