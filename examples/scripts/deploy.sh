#!/usr/bin/env bash
# deploy.sh INVENTORY_PATH FILE.workflow.json: puts the workflow into JOC's inventory and deploys
# it to every controller; prints one line per controller: STATUS CONTROLLER PATH.
source "$(dirname "$0")/common.sh"
[ $# -eq 2 ] || { echo "usage: deploy.sh INVENTORY_PATH FILE.workflow.json" >&2; exit 2; }
jq -n --arg path "$1" --rawfile json "$2" '{path: $path, type: "ITEM_TYPE_WORKFLOW", json: $json}' \
  | call InventoryService/PutObject >/dev/null
jq -n --arg path "$1" '{paths: [$path]}' | call DeploymentService/Deploy \
  | jq -r '.deployments[] | "\(.status | sub("DEPLOYMENT_STATUS_"; "") | ascii_downcase) \(.controllerId) \(.path)"'
