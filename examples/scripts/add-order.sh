#!/usr/bin/env bash
# add-order.sh WORKFLOW_PATH [NAME=VALUE ...]: adds an order (arguments as strings); prints its id.
source "$(dirname "$0")/common.sh"
[ $# -ge 1 ] || { echo "usage: add-order.sh WORKFLOW_PATH [NAME=VALUE ...]" >&2; exit 2; }
workflow=$1
shift
arguments='{}'
for pair in "$@"; do
  [[ $pair == *=* ]] || { echo "add-order.sh: argument must be NAME=VALUE, not '$pair'" >&2; exit 2; }
  arguments=$(jq -c --arg k "${pair%%=*}" --arg v "${pair#*=}" '. + {($k): {string: $v}}' <<<"$arguments")
done
jq -n --arg w "$workflow" --argjson a "$arguments" '{workflowPath: $w, arguments: $a}' \
  | call OrderService/AddOrder | jq -r .orderId
