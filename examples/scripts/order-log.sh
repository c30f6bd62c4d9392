#!/usr/bin/env bash
# order-log.sh ORDER_ID: the order's job output (stdout and stderr as they came), live until the
# order ends.
source "$(dirname "$0")/common.sh"
[ $# -eq 1 ] || { echo "usage: order-log.sh ORDER_ID" >&2; exit 2; }
jq -n --arg id "$1" '{orderId: $id, follow: true}' | call OrderService/GetOrderLog | jq -j '.chunk // ""'
