"""Pure rules for inventory objects: what a valid draft is, and the exact JSON that is deployed."""

from __future__ import annotations

import json

from gen.ostinato.common.v1 import items_pb2
from ostinato.errors import InvalidArgument
from ostinato.workflow.model import canonical_json, parse_workflow


def canonical_draft(type: int, json_text: str, path: str) -> str:
    """Validates a draft and returns the text JOC stores: workflows in canonical JSON with their
    path; other types (no proto of their own yet) with sorted keys, spaced like canonical_json."""
    if type == items_pb2.ITEM_TYPE_UNSPECIFIED or type not in items_pb2.ItemType.values():
        raise InvalidArgument("give the object's type (workflow, job resource, ...)", field="type")
    if type == items_pb2.ITEM_TYPE_WORKFLOW:
        workflow = parse_workflow(json_text, path)
        workflow.path = path
        workflow.version_id = ""
        return canonical_json(workflow)
    try:
        value = json.loads(json_text)
    except ValueError as e:
        raise InvalidArgument(f"not JSON: {e}", field="json") from None
    if not isinstance(value, dict):
        raise InvalidArgument("must be a JSON object", field="json")
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


# Types controllers accept so far; other objects stay in the inventory and are reported
# not deployed, without failing the workflows deployed beside them.
DEPLOYABLE_TYPES = frozenset({items_pb2.ITEM_TYPE_WORKFLOW})


def not_deployable_reason(type: int) -> str:
    if type in DEPLOYABLE_TYPES:
        return ""
    name = items_pb2.ItemType.Name(items_pb2.ItemType.ValueType(type))
    return f"{name.removeprefix('ITEM_TYPE_').lower()} objects cannot be deployed yet"


def deployable(type: int, path: str, stored_json: str, version_id: str) -> items_pb2.SignedItem:
    """The item handed to controllers. A workflow carries its path and version id inside the JSON
    too (both must agree with the SignedItem's); signing comes later."""
    text = stored_json
    if type == items_pb2.ITEM_TYPE_WORKFLOW:
        try:
            workflow = parse_workflow(stored_json, path)
        except InvalidArgument as e:
            # The draft was valid when stored; the rules may have changed since.
            raise InvalidArgument(f"{path}: {e}") from None
        workflow.path = path
        workflow.version_id = version_id
        text = canonical_json(workflow)
    return items_pb2.SignedItem(type=type, path=path, version_id=version_id, json=text)  # type: ignore[arg-type]
