"""Pure rules for inventory objects: what a valid draft of each type is, the references between
objects (resolved at validation, followed on moves), and the exact JSON that is deployed and signed.

Workflows are proto messages (canonical protobuf JSON). Locks and job resources are checked against
their protos (LockItem, JobResourceItem: what the controller parses). Calendars and schedules are
checked by the daily plan's own parsers (ostinato/dailyplan), the ones the planner uses. The other
types have no proto yet: their drafts are JSON objects with a few checked fields (below). All but
workflows are stored with sorted keys.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from gen.ostinato.common.v1 import items_pb2, workflow_pb2
from joc_svc import naming
from ostinato import limits
from ostinato.dailyplan.calendars import parse_calendar
from ostinato.dailyplan.schedules import parse_schedule
from ostinato.errors import InvalidArgument
from ostinato.workflow import expressions
from ostinato.workflow.model import canonical_json, check_subagent_cluster, parse_workflow

T = items_pb2

# JS7: these are deployed to controllers; calendars and schedules are released for the daily plan.
DEPLOYABLE_TYPES = frozenset(
    {
        T.ITEM_TYPE_WORKFLOW,
        T.ITEM_TYPE_JOB_RESOURCE,
        T.ITEM_TYPE_FILE_ORDER_SOURCE,
        T.ITEM_TYPE_LOCK,
        T.ITEM_TYPE_NOTICE_BOARD,
        T.ITEM_TYPE_SUBAGENT_CLUSTER,
    }
)
RELEASABLE_TYPES = frozenset({T.ITEM_TYPE_CALENDAR, T.ITEM_TYPE_SCHEDULE})

# Types controllers accept so far: JOC delivers these. Other deployable objects stay in the
# inventory and are reported not deployed, without failing the workflows deployed beside them.
CONTROLLER_TYPES = frozenset(
    {T.ITEM_TYPE_WORKFLOW, T.ITEM_TYPE_JOB_RESOURCE, T.ITEM_TYPE_LOCK, T.ITEM_TYPE_SUBAGENT_CLUSTER}
)

# Keys JOC sets in the deployed JSON (a workflow's versionId is a field of its proto; the other
# types are not versioned inside); drafts do not keep them.
_DEPLOYED_KEYS = ("path", "versionId")


def word(item_type: int) -> str:
    """ITEM_TYPE_JOB_RESOURCE -> "job resource"."""
    return naming.enum_word(items_pb2.ItemType, item_type).lower().replace("_", " ")


def check_type(item_type: int, field: str = "type") -> int:
    if item_type == T.ITEM_TYPE_UNSPECIFIED or item_type not in items_pb2.ItemType.values():
        raise InvalidArgument("give the object's type (workflow, job resource, ...)", field=field)
    return item_type


# ---- drafts


def canonical_draft(type: int, json_text: str, path: str) -> str:
    """Validates a draft's own content (not its references) and returns the text JOC stores:
    workflows in canonical JSON with their path; other types with sorted keys, spaced like
    canonical_json, without the path and version id JOC sets at deployment."""
    check_type(type)
    if type == T.ITEM_TYPE_WORKFLOW:
        size = len(json_text.encode())
        if size > limits.ITEM_JSON_BYTES:
            raise limits.too_large("json", size, limits.ITEM_JSON_BYTES, "JSON")
        workflow = parse_workflow(json_text, path)
        workflow.path = path
        workflow.version_id = ""
        return _within_limit(canonical_json(workflow))
    value = limits.load_item_json(json_text)
    if not isinstance(value, dict):
        raise InvalidArgument("must be a JSON object", field="json")
    for key in _DEPLOYED_KEYS:
        value.pop(key, None)
    _CHECKS.get(type, _no_check)(value)
    return _within_limit(_dumps(value))


def _within_limit(canonical: str) -> str:
    """The text JOC stores and deploys, which may be longer than the text given (spaces after
    separators, the path inside)."""
    size = len(canonical.encode())
    if size > limits.ITEM_JSON_BYTES:
        raise limits.too_large("json", size, limits.ITEM_JSON_BYTES, "JSON as stored (canonical)")
    return canonical


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _no_check(value: dict[str, Any]) -> None:
    pass


def _expect(value: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str, required: bool) -> Any:
    if key not in value:
        if required:
            raise InvalidArgument(f"missing; give {what}", field=key)
        return None
    found = value[key]
    if not isinstance(found, kind) or isinstance(found, bool) and kind is not bool:
        raise InvalidArgument(f"must be {what}", field=key)
    return found


def _check_path_field(text: str, field: str) -> None:
    naming.check_path(text, field)


def _parse_as(value: dict[str, Any], message: Message) -> None:
    try:
        json_format.ParseDict(value, message)
    except json_format.ParseError as e:
        text = str(e).split("\n", 1)[0]
        # protobuf says: ... has no field named "x" at "JobResourceItem.env".
        where = text.rsplit(' at "', 1)[1].split('"', 1)[0] if ' at "' in text else ""
        field = where.split(".", 1)[1] if "." in where else "json"
        raise InvalidArgument(text.split(' at "', 1)[0], field=field) from None


def _check_job_resource(value: dict[str, Any]) -> None:
    resource = workflow_pb2.JobResourceItem()
    _parse_as(value, resource)
    for kind, values in (("variables", resource.variables), ("env", resource.env)):
        for name, expression in values.items():
            expressions.check(expression, f"{kind}.{name}")


def _check_lock(value: dict[str, Any]) -> None:
    lock = workflow_pb2.LockItem()
    _parse_as(value, lock)
    if lock.limit < 1:
        raise InvalidArgument("a lock needs a limit of at least 1", field="limit")


def _check_subagent_cluster(value: dict[str, Any]) -> None:
    cluster = workflow_pb2.SubagentClusterItem()
    _parse_as(value, cluster)
    check_subagent_cluster(cluster)


def _check_file_order_source(value: dict[str, Any]) -> None:
    _check_path_field(_expect(value, "workflowPath", str, "the workflow's path", True), "workflowPath")
    _expect(value, "agent", str, "the agent's name", True)
    _expect(value, "directory", str, "the directory to watch", True)
    _expect(value, "pattern", str, "a regular expression for file names", False)


def _check_calendar(value: dict[str, Any]) -> None:
    parse_calendar(value)


def _check_schedule(value: dict[str, Any]) -> None:
    parse_schedule(value)
    for field, _, path, _ in _walk_references(T.ITEM_TYPE_SCHEDULE, value):
        _check_path_field(path, field)


_CHECKS: dict[int, Callable[[dict[str, Any]], None]] = {
    T.ITEM_TYPE_JOB_RESOURCE: _check_job_resource,
    T.ITEM_TYPE_LOCK: _check_lock,
    T.ITEM_TYPE_SUBAGENT_CLUSTER: _check_subagent_cluster,
    T.ITEM_TYPE_FILE_ORDER_SOURCE: _check_file_order_source,
    T.ITEM_TYPE_CALENDAR: _check_calendar,
    T.ITEM_TYPE_SCHEDULE: _check_schedule,
}


# ---- references


@dataclass(frozen=True, slots=True)
class Reference:
    field: str  # as written in the JSON, e.g. jobs.a.jobResourcePaths[0]
    type: int  # the type of object it names
    path: str


@dataclass(frozen=True, slots=True)
class Problem:
    path: str
    type: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{word(self.type)} {self.path}: {self.field}: {self.message}"


def references(type: int, json_text: str) -> list[Reference]:
    """The objects a draft names, with where it names them."""
    try:
        value = json.loads(json_text)
    except ValueError:
        return []
    return [Reference(field, target, path) for field, target, path, _ in _walk_references(type, value)]


def _walk_references(type: int, value: Any) -> Iterator[tuple[str, int, str, Callable[[str], None]]]:
    """(field, target type, path, setter) for every reference in a parsed draft."""
    if not isinstance(value, dict):
        return
    if type == T.ITEM_TYPE_WORKFLOW:
        # Workflow-level and job-level jobResourcePaths, wherever jobs are (named or inline).
        yield from _walk_key(value, "", "jobResourcePaths", T.ITEM_TYPE_JOB_RESOURCE)
        yield from _walk_key(value, "", "subagentClusterId", T.ITEM_TYPE_SUBAGENT_CLUSTER)
    elif type == T.ITEM_TYPE_FILE_ORDER_SOURCE:
        yield from _scalar(value, "workflowPath", "workflowPath", T.ITEM_TYPE_WORKFLOW)
    elif type == T.ITEM_TYPE_SCHEDULE:
        yield from _scalar(value, "workflowPath", "workflowPath", T.ITEM_TYPE_WORKFLOW)
        yield from _listed(value, "workflowPaths", "workflowPaths", T.ITEM_TYPE_WORKFLOW)
        for key in ("calendars", "nonWorkingDayCalendars"):
            entries = value.get(key)
            for i, calendar in enumerate(entries if isinstance(entries, list) else []):
                if isinstance(calendar, dict):
                    field = f"{key}[{i}].calendarPath"
                    yield from _scalar(calendar, "calendarPath", field, T.ITEM_TYPE_CALENDAR)


def _scalar(
    holder: dict[str, Any], key: str, field: str, target: int
) -> Iterator[tuple[str, int, str, Callable[[str], None]]]:
    if isinstance(holder.get(key), str):

        def set_value(new: str) -> None:
            holder[key] = new

        yield field, target, holder[key], set_value


def _listed(
    holder: dict[str, Any], key: str, field: str, target: int
) -> Iterator[tuple[str, int, str, Callable[[str], None]]]:
    items = holder.get(key)
    if not isinstance(items, list):
        return
    for i, path in enumerate(items):
        if isinstance(path, str):

            def set_value(new: str, i: int = i) -> None:
                items[i] = new

            yield f"{field}[{i}]", target, path, set_value


def _walk_key(
    value: Any, prefix: str, key: str, target: int
) -> Iterator[tuple[str, int, str, Callable[[str], None]]]:
    if isinstance(value, dict):
        for k, v in value.items():
            field = f"{prefix}.{k}" if prefix else k
            if k == key:
                yield from (_listed if isinstance(v, list) else _scalar)(value, k, field, target)
            else:
                yield from _walk_key(v, field, key, target)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk_key(v, f"{prefix}[{i}]", key, target)


def problems(objects: Iterable[tuple[str, int, str]], exists: Callable[[int, str], bool]) -> list[Problem]:
    """Unresolved references of (path, type, json) drafts, and calendars and schedules that the
    daily plan's rules (which may have changed since the draft was stored) refuse; `exists(type,
    path)` says whether the inventory has that object."""
    found = []
    for path, type, text in objects:
        if type in RELEASABLE_TYPES:
            try:
                canonical_draft(type, text, path)
            except InvalidArgument as e:
                found.append(Problem(path, type, e.field or "json", e.message))
                continue
        for ref in references(type, text):
            if not ref.path.startswith("/"):
                found.append(
                    Problem(path, type, ref.field, f"{limits.excerpt(ref.path)} is not an absolute path")
                )
            elif not exists(ref.type, ref.path):
                found.append(
                    Problem(path, type, ref.field, f"no {word(ref.type)} {ref.path} in the inventory")
                )
    return found


def check_problems(found: list[Problem]) -> None:
    """INVALID_ARGUMENT naming each object, path and field (the first few)."""
    if found:
        shown = "; ".join(str(p) for p in found[:5])
        more = f" (and {len(found) - 5} more)" if len(found) > 5 else ""
        raise InvalidArgument(f"{shown}{more}")


def rewrite_references(type: int, json_text: str, moved: dict[tuple[int, str], str], path: str) -> str | None:
    """The draft with references to moved objects ((type, old path) -> new path) following them;
    None when it names none of them."""
    try:
        value = json.loads(json_text)
    except ValueError:
        return None
    changed = False
    for _, target, old, set_value in list(_walk_references(type, value)):
        new = moved.get((target, old))
        if new is not None:
            set_value(new)
            changed = True
    if not changed:
        return None
    return canonical_draft(type, _dumps(value), path)


# ---- deployment


def not_deployable_reason(type: int) -> str:
    if type in RELEASABLE_TYPES:
        return f"{word(type)} objects are released (ostinato release), not deployed"
    if type in CONTROLLER_TYPES:
        return ""
    name = naming.enum_word(items_pb2.ItemType, type).lower()
    return f"{name} objects cannot be deployed yet"


def deployable(type: int, path: str, stored_json: str, version_id: str) -> items_pb2.SignedItem:
    """The item handed to controllers, unsigned: its JSON carries its path and version id (both
    agree with the SignedItem's), so a signature binds them too."""
    if type == T.ITEM_TYPE_WORKFLOW:
        try:
            workflow = parse_workflow(stored_json, path)
        except InvalidArgument as e:
            # The draft was valid when stored; the rules may have changed since.
            raise InvalidArgument(f"{path}: {e}") from None
        workflow.path = path
        workflow.version_id = version_id
        text = canonical_json(workflow)
    else:
        value = json.loads(stored_json)
        value["path"] = path
        text = _dumps(value)
    return items_pb2.SignedItem(type=type, path=path, version_id=version_id, json=text)  # type: ignore[arg-type]


def imported(item: items_pb2.SignedItem, field: str, new_version_id: str) -> tuple[items_pb2.SignedItem, str]:
    """An item signed outside JOC, checked without touching its bytes: (the item with its
    version id, the draft it corresponds to). A workflow's version id is the one in its JSON;
    other types get the export's (given with the item) or `new_version_id`."""
    check_type(item.type, f"{field}.type")
    limits.check_signed_item(item, field)
    if item.type not in DEPLOYABLE_TYPES:
        raise InvalidArgument(f"{word(item.type)} objects are not deployed", field=f"{field}.type")
    path = naming.check_path(item.path, f"{field}.path")
    try:
        value = limits.load_item_json(item.json, f"{field}.json", limits.SIGNED_ITEM_BYTES)
    except InvalidArgument as e:
        raise InvalidArgument(f"{path}: {e.message}", field=e.field) from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"{path}: must be a JSON object", field=f"{field}.json")
    if value.get("path") != path:
        raise InvalidArgument(
            f"the JSON names path {limits.excerpt(str(value.get('path')))}, the archive {path!r}",
            field=f"{field}.json",
        )
    version_id = value.get("versionId") if item.type == T.ITEM_TYPE_WORKFLOW else item.version_id
    if item.type != T.ITEM_TYPE_WORKFLOW:
        version_id = version_id or new_version_id
    if not isinstance(version_id, str) or not version_id:
        raise InvalidArgument(f"{path}: the JSON has no versionId (export it for signing)", field=field)
    limits.check_name(version_id, f"{field}.json.versionId", "a version id")
    if item.version_id and item.version_id != version_id:
        raise InvalidArgument(
            f"{path}: version {limits.excerpt(item.version_id)} differs from the JSON's {version_id}",
            field=f"{field}.version_id",
        )
    try:
        draft = canonical_draft(item.type, item.json, path)
    except InvalidArgument as e:
        raise InvalidArgument(f"{path}: {e}", field=f"{field}.json") from None
    result = items_pb2.SignedItem()
    result.CopyFrom(item)
    result.version_id = version_id
    return result, draft
