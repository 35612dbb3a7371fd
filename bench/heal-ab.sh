#!/bin/bash
# A/B of two hagw binaries on the seed-000 lab: 6 fail/heal cycles each.
# Usage: bench/heal-ab.sh BINARY LABEL   (root; prints failover_ms and heal_ms per cycle)
# heal samples for a binary: $1 = hagw binary, $2 = label
B=$1
$B lab up > /dev/null 2>&1
for i in 1 2 3 4 5 6; do
  f=$($B lab fail r1 2>&1 | grep -o "failover_ms=[0-9]*" | head -1)
  sleep 4
  h=$($B lab heal r1 2>&1 | grep -o "heal_ms=[0-9]*" | head -1)
  echo "$2 $f $h"
  sleep 3
done
$B lab down > /dev/null 2>&1
