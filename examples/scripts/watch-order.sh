#!/usr/bin/env bash
# watch-order.sh ORDER_ID: prints the order's events (id, kind, state after it) until it ends;
# exits 0 when it finished, 1 when it ended otherwise (failed and cancelled, or deleted).
source "$(dirname "$0")/common.sh"
[ $# -eq 1 ] || { echo "usage: watch-order.sh ORDER_ID" >&2; exit 2; }
jq -n --arg id "$1" '{orderId: $id}' | call OrderService/WatchOrder \
  | jq -r '"\(.event.id) \(.event | del(.id, .orderId, .timestamp) | keys[0] // "snapshot") \(.order.state | sub("ORDER_STATE_"; "") | ascii_downcase)"' \
  | { state=""; while read -r line; do echo "$line"; state=${line##* }; done; [ "$state" = finished ]; }
