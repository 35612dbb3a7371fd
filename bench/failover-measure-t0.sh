#!/usr/bin/env bash
# ../shared/bench/failover-measure.sh with its t0 printed (same commands, same
# order, nothing added between the cut and the poll): the capture in
# bench/failover.sh needs t0 to place the dead router's last packet.
# Usage: failover-measure-t0.sh HOSTNS ROUTERNS DEADIP
h=$1 r=$2 ip=$3
t0=$(date +%s%N)
ip netns exec $r iptables -I INPUT -i eth1 -j DROP
ip netns exec $r iptables -I OUTPUT -o eth1 -j DROP
while ip -n $h route show default | grep -q "via $ip"; do sleep 0.005; done
t1=$(date +%s%N)
echo "failover_ms=$(( (t1-t0)/1000000 )) t0=$t0 t1=$t1"
ip netns exec $r iptables -D INPUT -i eth1 -j DROP
ip netns exec $r iptables -D OUTPUT -o eth1 -j DROP
