"""The expression subset the skeleton needs: variable references and literals.

`$name` / `${name}` read an order variable; `'text'` / `"text"` and numbers are literals; anything
else is taken as literal text. The full expression language (operators, functions) replaces this.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from gen.ostinato.common.v1 import values_pb2
from ostinato.errors import InvalidArgument
from ostinato.workflow.values import value_text

_VAR = re.compile(r"^\$(?:\{([A-Za-z_][A-Za-z0-9_.-]*)\}|([A-Za-z_][A-Za-z0-9_]*))$")


def check(expr: str, field: str) -> None:
    if expr.startswith("$") and not _VAR.match(expr):
        raise InvalidArgument(f"not a variable reference: {expr!r} (position 0)", field=field)
    if expr[:1] in ("'", '"') and (len(expr) < 2 or expr[-1] != expr[0]):
        raise InvalidArgument(f"unterminated string at position 0 in {expr!r}", field=field)


def evaluate_text(expr: str, variables: Mapping[str, values_pb2.Value]) -> str:
    """The expression's value as text (for environment variables). Unknown variables are empty."""
    m = _VAR.match(expr)
    if m:
        name = m.group(1) or m.group(2)
        v = variables.get(name)
        return value_text(v) if v is not None else ""
    if len(expr) >= 2 and expr[0] in ("'", '"') and expr[-1] == expr[0]:
        return expr[1:-1]
    return expr
