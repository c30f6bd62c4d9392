"""The workflow expression language (JS7-like): If conditions, job environment values, Execute and
AddOrder arguments.

    $rc == 0 && variable('name', label='L', default='none') != 'none'
    "hello, ${name}" ++ ' (' ++ toString($n + 1) ++ ')'

`parse` turns text into an immutable AST whose `str()` prints it back in canonical syntax;
`evaluate` runs it over a `Scope`. Numbers are Decimal128 (0.1 + 0.2 == 0.3; results keep 34
significant digits, literals are exact), `==` across types is false, ordering across types and every
other type mismatch is an `ExpressionError` naming the offending position. Pure: no clock, no I/O.

Grammar, lowest precedence first (all binary operators associate to the left):

    expression  = or ;
    or          = and { "||" and } ;
    and         = equality { "&&" equality } ;
    equality    = comparison { ( "==" | "!=" ) comparison } ;
    comparison  = additive { ( "<" | "<=" | ">" | ">=" | "in" ) additive } ;
    additive    = term { ( "++" | "+" | "-" ) term } ;
    term        = unary { ( "*" | "/" ) unary } ;
    unary       = { "!" | "-" } postfix ;        (* "-" directly before a number makes a literal *)
    postfix     = primary { "." method [ "(" ")" ] } ;
    primary     = number | "true" | "false" | sq_string | dq_string | variable
                | "[" [ expression { "," expression } ] "]"
                | function "(" expression ")"
                | "variable" "(" var_args ")"
                | "(" expression ")" ;
    var_args    = ( expression | keyword_arg ) { "," keyword_arg } ;   (* each keyword once *)
    keyword_arg = ( "key" | "default" ) "=" expression
                | ( "label" | "job" ) "=" ( sq_string | dq_string | identifier ) ;
    function    = method = "toNumber" | "toBoolean" | "toString" | "length" ;
    number      = digit { digit } [ "." digit { digit } ] ;
    variable    = "$" identifier | "${" braced_name "}" ;
    identifier  = ( letter | "_" ) { letter | digit | "_" } ;
    braced_name = ( letter | "_" ) { letter | digit | "_" | "." | "-" } ;
    sq_string   = "'" { char | "\\'" | "\\\\" } "'" ;   (* other backslashes are literal *)
    dq_string   = '"' { char | variable | escape } '"' ;
    escape      = "\\" ( '"' | "\\" | "$" | "t" | "r" | "n" ) ;
    (* letters and digits are ASCII; whitespace is space, tab, CR, LF *)
"""

from __future__ import annotations

import decimal
import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, ClassVar, Protocol, runtime_checkable

from gen.ostinato.common.v1 import values_pb2
from ostinato.errors import InvalidArgument
from ostinato.limits import EXPRESSION_CHARS, VALUE_BYTES, excerpt
from ostinato.workflow.values import from_value, to_value, value_text

# Decimal128, as Java's BigDecimal with MathContext.DECIMAL128: + - * are exact up to 34 significant
# digits, / rounds there. Passed explicitly to every operation so the thread's context never matters.
NUMBER_CONTEXT = decimal.Context(
    prec=34,
    rounding=decimal.ROUND_HALF_EVEN,
    Emin=-6143,
    Emax=6144,
    traps=[decimal.InvalidOperation, decimal.DivisionByZero, decimal.Overflow],
)
# For turning a (range-checked) result into text: wide enough never to round or trap.
_TEXT_CONTEXT = decimal.Context(prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)

# Parentheses, lists and calls nest the recursive-descent parser; binary chains deepen the tree.
# Both bounded so that no input reaches Python's recursion limit.
MAX_NESTING = 32
MAX_DEPTH = 200

FUNCTIONS = ("toNumber", "toBoolean", "toString", "length")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BRACED_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_NUMBER_TEXT = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


class ExpressionError(InvalidArgument):
    """A syntax error, a type error or a missing variable, at `position` (0-based) in `expression`."""

    def __init__(self, reason: str, *, position: int, expression: str, field: str = "") -> None:
        self.reason = reason
        self.position = position
        self.expression = expression
        super().__init__(f"{reason} at position {position} in {excerpt(expression, position)}", field=field)


# ---------------------------------------------------------------------------------------------- AST


@dataclass(frozen=True, slots=True)
class Expression:
    """Base of the AST. `pos` and `source` locate a node for error messages; equality ignores them."""

    pos: int = field(default=0, kw_only=True, compare=False, repr=False)
    source: str = field(default="", kw_only=True, compare=False, repr=False)

    def __str__(self) -> str:
        return _text(self)


@dataclass(frozen=True, slots=True)
class NumberLiteral(Expression):
    value: Decimal


@dataclass(frozen=True, slots=True)
class StringLiteral(Expression):
    value: str


@dataclass(frozen=True, slots=True)
class BooleanLiteral(Expression):
    value: bool


@dataclass(frozen=True, slots=True)
class VariableRef(Expression):
    name: str


@dataclass(frozen=True, slots=True)
class Interpolation(Expression):
    """A double-quoted string with variables: text parts (non-empty, never adjacent) and variables."""

    parts: tuple[str | VariableRef, ...]


@dataclass(frozen=True, slots=True)
class ListLiteral(Expression):
    items: tuple[Expression, ...]


@dataclass(frozen=True, slots=True)
class VariableFunction(Expression):
    """`variable(key, label=..., job=..., default=...)`; empty label/job mean "not given"."""

    key: Expression
    label: str = ""
    job: str = ""
    default: Expression | None = None


@dataclass(frozen=True, slots=True)
class FunctionCall(Expression):
    """`toNumber(x)` and the like; `x.toNumber` parses to the same node."""

    function: str
    argument: Expression


@dataclass(frozen=True, slots=True)
class UnaryOp(Expression):
    op: str  # "!" or "-"
    operand: Expression


@dataclass(frozen=True, slots=True)
class BinaryOp(Expression):
    op: str
    left: Expression
    right: Expression


_BINARY_PRECEDENCE = {
    "||": 1,
    "&&": 2,
    "==": 3,
    "!=": 3,
    "<": 4,
    "<=": 4,
    ">": 4,
    ">=": 4,
    "in": 4,
    "++": 5,
    "+": 5,
    "-": 5,
    "*": 6,
    "/": 6,
}
_LEVELS: tuple[tuple[str, ...], ...] = tuple(
    tuple(op for op, p in _BINARY_PRECEDENCE.items() if p == level) for level in range(1, 7)
)
_UNARY_PRECEDENCE = 7
_ATOM_PRECEDENCE = 8


# ------------------------------------------------------------------------------------------ printing


def _precedence(e: Expression) -> int:
    if isinstance(e, BinaryOp):
        return _BINARY_PRECEDENCE[e.op]
    if isinstance(e, UnaryOp):
        return _UNARY_PRECEDENCE
    return _ATOM_PRECEDENCE


def _quote_single(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


_DQ_ESCAPES = {"\\": "\\\\", '"': '\\"', "$": "\\$", "\t": "\\t", "\r": "\\r", "\n": "\\n"}


def _variable_text(name: str) -> str:
    return f"${name}" if _NAME.fullmatch(name) else f"${{{name}}}"


def _text(e: Expression) -> str:
    if isinstance(e, NumberLiteral):
        return format(e.value, "f")
    if isinstance(e, StringLiteral):
        return _quote_single(e.value)
    if isinstance(e, BooleanLiteral):
        return "true" if e.value else "false"
    if isinstance(e, VariableRef):
        return _variable_text(e.name)
    if isinstance(e, Interpolation):
        inner = "".join(
            f"${{{p.name}}}" if isinstance(p, VariableRef) else "".join(_DQ_ESCAPES.get(c, c) for c in p)
            for p in e.parts
        )
        return f'"{inner}"'
    if isinstance(e, ListLiteral):
        return "[" + ", ".join(_text(x) for x in e.items) + "]"
    if isinstance(e, FunctionCall):
        return f"{e.function}({_text(e.argument)})"
    if isinstance(e, VariableFunction):
        args = [_text(e.key)]
        if e.label:
            args.append(f"label={_quote_single(e.label)}")
        if e.job:
            args.append(f"job={_quote_single(e.job)}")
        if e.default is not None:
            args.append(f"default={_text(e.default)}")
        return f"variable({', '.join(args)})"
    if isinstance(e, UnaryOp):
        operand = _text(e.operand)
        # "-(3)" is the operator applied to 3; "-3" would read back as the literal -3.
        if _precedence(e.operand) < _UNARY_PRECEDENCE or (e.op == "-" and operand[:1].isdigit()):
            operand = f"({operand})"
        return e.op + operand
    if isinstance(e, BinaryOp):
        p = _BINARY_PRECEDENCE[e.op]
        left, right = _text(e.left), _text(e.right)
        if _precedence(e.left) < p:
            left = f"({left})"
        if _precedence(e.right) <= p:
            right = f"({right})"
        return f"{left} {e.op} {right}"
    raise TypeError(f"not an expression node: {e!r}")


def _children(e: Expression) -> tuple[Expression, ...]:
    if isinstance(e, Interpolation):
        return tuple(p for p in e.parts if isinstance(p, VariableRef))
    if isinstance(e, ListLiteral):
        return e.items
    if isinstance(e, FunctionCall):
        return (e.argument,)
    if isinstance(e, VariableFunction):
        return (e.key,) if e.default is None else (e.key, e.default)
    if isinstance(e, UnaryOp):
        return (e.operand,)
    if isinstance(e, BinaryOp):
        return (e.left, e.right)
    return ()


def _depth(root: Expression) -> int:
    deepest, stack = 0, [(root, 1)]
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        stack.extend((c, d + 1) for c in _children(node))
    return deepest


# ------------------------------------------------------------------------------------------- lexing


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "number", "string", "template", "variable", "name", "op", "end"
    text: str  # operator or name; the value of a number or string
    pos: int
    parts: tuple[str | VariableRef, ...] = ()


_OPERATORS = ("||", "&&", "==", "!=", "<=", ">=", "++", "<", ">", "+", "-", "*", "/", "!")
_PUNCTUATION = "()[],.="


class _Lexer:
    def __init__(self, text: str) -> None:
        self.text = text

    def fail(self, reason: str, pos: int) -> ExpressionError:
        return ExpressionError(reason, position=pos, expression=self.text)

    def tokens(self) -> list[_Token]:
        text, i = self.text, 0
        out: list[_Token] = []
        while True:
            while i < len(text) and text[i] in " \t\r\n":
                i += 1
            if i == len(text):
                out.append(_Token("end", "", i))
                return out
            c = text[i]
            if c.isascii() and c.isdigit():
                m = _NUMBER.match(text, i)
                assert m is not None
                out.append(_Token("number", m.group(), i))
                i = m.end()
            elif c == "'":
                value, i2 = self.single_quoted(i)
                out.append(_Token("string", value, i))
                i = i2
            elif c == '"':
                parts, i2 = self.double_quoted(i)
                if all(isinstance(p, str) for p in parts):
                    out.append(_Token("string", "".join(str(p) for p in parts), i))
                else:
                    out.append(_Token("template", "", i, tuple(parts)))
                i = i2
            elif c == "$":
                name, i2 = self.variable(i)
                out.append(_Token("variable", name, i))
                i = i2
            elif c.isascii() and (c.isalpha() or c == "_"):
                m = _NAME.match(text, i)
                assert m is not None
                out.append(_Token("name", m.group(), i))
                i = m.end()
            else:
                op = next((o for o in _OPERATORS if text.startswith(o, i)), None)
                if op is None and c in _PUNCTUATION:
                    op = c
                if op is None:
                    raise self.fail(f"unexpected character {c!r}", i)
                out.append(_Token("op", op, i))
                i += len(op)

    def variable(self, start: int) -> tuple[str, int]:
        """`$name` or `${name}` at `start`: the name and the offset after it."""
        text = self.text
        if text.startswith("{", start + 1):
            m = _BRACED_NAME.match(text, start + 2)
            if m is None:
                raise self.fail("expected a variable name after '${'", start + 2)
            if not text.startswith("}", m.end()):
                raise self.fail("expected '}'", m.end())
            return m.group(), m.end() + 1
        m = _NAME.match(text, start + 1)
        if m is None:
            raise self.fail("expected a variable name after '$'", start + 1)
        return m.group(), m.end()

    def single_quoted(self, start: int) -> tuple[str, int]:
        text, i = self.text, start + 1
        out: list[str] = []
        while i < len(text):
            c = text[i]
            if c == "'":
                return "".join(out), i + 1
            if c == "\\" and i + 1 < len(text) and text[i + 1] in "'\\":
                out.append(text[i + 1])
                i += 2
                continue
            out.append(c)
            i += 1
        raise self.fail("unterminated string", start)

    def double_quoted(self, start: int) -> tuple[list[str | VariableRef], int]:
        text, i = self.text, start + 1
        parts: list[str | VariableRef] = []
        chars: list[str] = []
        while i < len(text):
            c = text[i]
            if c == '"':
                if chars:
                    parts.append("".join(chars))
                return parts, i + 1
            if c == "\\":
                escaped = text[i + 1 : i + 2]
                replacement = {'"': '"', "\\": "\\", "$": "$", "t": "\t", "r": "\r", "n": "\n"}.get(escaped)
                if replacement is None:
                    what = f"'\\{escaped}'" if escaped else "'\\' at the end"
                    raise self.fail(f'unknown escape {what} (use \\" \\\\ \\$ \\t \\r \\n)', i)
                chars.append(replacement)
                i += 2
            elif c == "$":
                name, i2 = self.variable(i)
                if chars:
                    parts.append("".join(chars))
                    chars = []
                parts.append(VariableRef(name, pos=i, source=text))
                i = i2
            else:
                chars.append(c)
                i += 1
        raise self.fail("unterminated string", start)


# ------------------------------------------------------------------------------------------ parsing


def _describe(t: _Token) -> str:
    if t.kind == "end":
        return "end of input"
    if t.kind in ("string", "template"):
        return "a string"
    if t.kind == "variable":
        return "a variable"
    return repr(t.text)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _Lexer(text).tokens()
        self.i = 0
        self.nesting = 0

    @property
    def tok(self) -> _Token:
        return self.tokens[self.i]

    def advance(self) -> _Token:
        t = self.tokens[self.i]
        if t.kind != "end":
            self.i += 1
        return t

    def at(self, *ops: str) -> bool:
        return self.tok.kind == "op" and self.tok.text in ops

    def fail(self, reason: str, pos: int | None = None) -> ExpressionError:
        return ExpressionError(reason, position=self.tok.pos if pos is None else pos, expression=self.text)

    def expected(self, what: str) -> ExpressionError:
        if self.tok.kind == "end":
            return self.fail(f"expected {what}")
        return self.fail(f"expected {what} but found {_describe(self.tok)}")

    def expect(self, op: str) -> _Token:
        if not self.at(op):
            raise self.expected(repr(op))
        return self.advance()

    def parse(self) -> Expression:
        if self.tok.kind == "end":
            raise self.fail("empty expression")
        e = self.expression()
        if self.tok.kind != "end":
            raise self.fail(f"unexpected {_describe(self.tok)} after a complete expression")
        if _depth(e) > MAX_DEPTH:
            raise self.fail(f"expression nested more than {MAX_DEPTH} deep", 0)
        return e

    def expression(self) -> Expression:
        return self.binary(0)

    def nested(self, parse: Callable[[], Expression]) -> Expression:
        self.nesting += 1
        if self.nesting > MAX_NESTING:
            raise self.fail(f"more than {MAX_NESTING} nested parentheses, lists or calls")
        try:
            return parse()
        finally:
            self.nesting -= 1

    def binary(self, level: int) -> Expression:
        if level == len(_LEVELS):
            return self.unary()
        ops = _LEVELS[level]
        left = self.binary(level + 1)
        while self.tok.text in ops and self.tok.kind == ("name" if self.tok.text == "in" else "op"):
            op = self.advance()
            right = self.binary(level + 1)
            left = BinaryOp(op.text, left, right, pos=op.pos, source=self.text)
        return left

    def unary(self) -> Expression:
        prefix: list[_Token] = []
        while self.at("!", "-"):
            prefix.append(self.advance())
        if prefix and prefix[-1].text == "-" and self.tok.kind == "number":
            minus, number = prefix.pop(), self.advance()
            e: Expression = NumberLiteral(Decimal("-" + number.text), pos=minus.pos, source=self.text)
            e = self.postfix(e)
        else:
            e = self.postfix(self.primary())
        for op in reversed(prefix):
            e = UnaryOp(op.text, e, pos=op.pos, source=self.text)
        return e

    def postfix(self, e: Expression) -> Expression:
        while self.at("."):
            dot = self.advance()
            if self.tok.kind != "name":
                raise self.expected(f"a method ({', '.join(FUNCTIONS)})")
            name = self.advance()
            if name.text not in FUNCTIONS:
                raise self.fail(f"unknown method {name.text!r} (known: {', '.join(FUNCTIONS)})", name.pos)
            if self.at("("):
                self.advance()
                self.expect(")")
            e = FunctionCall(name.text, e, pos=dot.pos, source=self.text)
        return e

    def primary(self) -> Expression:
        t = self.tok
        src = self.text
        if t.kind == "number":
            self.advance()
            return NumberLiteral(Decimal(t.text), pos=t.pos, source=src)
        if t.kind == "string":
            self.advance()
            return StringLiteral(t.text, pos=t.pos, source=src)
        if t.kind == "template":
            self.advance()
            return Interpolation(t.parts, pos=t.pos, source=src)
        if t.kind == "variable":
            self.advance()
            return VariableRef(t.text, pos=t.pos, source=src)
        if t.kind == "name":
            if t.text in ("true", "false"):
                self.advance()
                return BooleanLiteral(t.text == "true", pos=t.pos, source=src)
            if t.text in FUNCTIONS:
                self.advance()
                self.expect("(")
                argument = self.nested(self.expression)
                self.expect(")")
                return FunctionCall(t.text, argument, pos=t.pos, source=src)
            if t.text == "variable":
                self.advance()
                return self.nested(lambda: self.variable_function(t))
            raise self.fail(
                f"unknown name {t.text!r} (strings need quotes: '{t.text}'; variables a '$': ${t.text})"
            )
        if self.at("("):
            self.advance()
            e = self.nested(self.expression)
            self.expect(")")
            return e
        if self.at("["):
            self.advance()
            return self.nested(lambda: self.list_literal(t))
        raise self.expected("a value")

    def list_literal(self, start: _Token) -> Expression:
        items: list[Expression] = []
        if not self.at("]"):
            items.append(self.expression())
            while self.at(","):
                self.advance()
                items.append(self.expression())
        self.expect("]")
        return ListLiteral(tuple(items), pos=start.pos, source=self.text)

    def variable_function(self, start: _Token) -> Expression:
        self.expect("(")
        key: Expression | None = None
        label = job = ""
        default: Expression | None = None
        seen: set[str] = set()
        first = True
        while not self.at(")"):
            if not first:
                self.expect(",")
            t = self.tok
            keyword = ""
            if (
                t.kind == "name"
                and self.tokens[self.i + 1].text == "="
                and self.tokens[self.i + 1].kind == "op"
            ):
                keyword = t.text
                if keyword not in ("key", "label", "job", "default"):
                    raise self.fail(f"unknown argument {keyword!r} (known: key, label, job, default)")
                if keyword in seen:
                    raise self.fail(f"argument {keyword!r} given twice")
                self.advance()
                self.advance()
            elif not first:
                raise self.expected("label=, job= or default=")
            else:
                keyword = "key"
            seen.add(keyword)
            first = False
            if keyword == "key":
                key = self.expression()
            elif keyword == "default":
                default = self.expression()
            else:
                value = self.tok
                if value.kind not in ("string", "name"):
                    raise self.expected(f"the {keyword} as a string or name")
                self.advance()
                if keyword == "label":
                    label = value.text
                else:
                    job = value.text
        self.expect(")")
        if key is None:
            raise self.fail("variable() needs the variable's name", start.pos)
        return VariableFunction(key, label, job, default, pos=start.pos, source=self.text)


@functools.lru_cache(maxsize=1024)
def parse(text: str) -> Expression:
    """The AST of `text`; raises ExpressionError naming what was expected and where."""
    if len(text) > EXPRESSION_CHARS:
        raise ExpressionError(
            f"expression of {len(text):,} characters, more than the limit of {EXPRESSION_CHARS:,}",
            position=0,
            expression=text,
        )
    return _Parser(text).parse()


def check(text: str, field: str) -> None:
    """Raises InvalidArgument (an ExpressionError) for `field` when `text` does not parse."""
    try:
        parse(text)
    except ExpressionError as e:
        raise ExpressionError(e.reason, position=e.position, expression=e.expression, field=field) from None


# --------------------------------------------------------------------------------------- evaluation


@runtime_checkable
class Scope(Protocol):
    def variable(self, name: str, label: str = "", job: str = "") -> values_pb2.Value | None:
        """The variable's value, or None. With a label or job: the value returned by the job run at
        that instruction label / by that job."""
        ...


class MappingScope:
    """A Scope over a mapping of names to values; `$rc` and `$returnCode` stand in for each other."""

    _ALIASES: ClassVar[dict[str, str]] = {"rc": "returnCode", "returnCode": "rc"}

    def __init__(self, variables: Mapping[str, values_pb2.Value]) -> None:
        self._variables = variables

    def variable(self, name: str, label: str = "", job: str = "") -> values_pb2.Value | None:
        if label or job:
            return None
        v = self._variables.get(name)
        if v is None and name in self._ALIASES:
            v = self._variables.get(self._ALIASES[name])
        return v


# Values during evaluation: str, Decimal (or int, from from_value), bool, list, dict.


def _type_name(v: Any) -> str:
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, Decimal)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "list"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, Decimal)) and not isinstance(v, bool)


def _equal(a: Any, b: Any) -> bool:
    """`==`: false across types (true is not 1), deep for lists and objects."""
    ta, tb = _type_name(a), _type_name(b)
    if ta != tb:
        return False
    if ta == "list":
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if ta == "object":
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return bool(a == b)


def _fail(node: Expression, reason: str) -> ExpressionError:
    return ExpressionError(reason, position=node.pos, expression=node.source)


def _in_range(d: Decimal) -> bool:
    return d.is_finite() and (d.is_zero() or NUMBER_CONTEXT.Etiny() <= d.adjusted() <= NUMBER_CONTEXT.Emax)


def _bad_number(v: values_pb2.Value) -> str:
    """Why a number in `v` cannot be used ("" if none): checked before from_value, which would turn
    "1E+999999999" into a billion-digit int."""
    kind = v.WhichOneof("kind")
    if kind == "number":
        try:
            d = Decimal(v.number)
        except decimal.InvalidOperation:
            return "an invalid number"
        return "" if _in_range(d) else "a number out of range" if d.is_finite() else "an invalid number"
    if kind == "list":
        return next((why for why in map(_bad_number, v.list.values) if why), "")
    if kind == "object":
        return next((why for why in map(_bad_number, v.object.fields.values()) if why), "")
    return ""


def _python(v: values_pb2.Value, node: Expression, name: str) -> Any:
    why = _bad_number(v)
    if why:
        raise _fail(node, f"variable {name!r} holds {why}")
    return from_value(v)


def _bounded(text: str, node: Expression) -> str:
    """A string an expression made, within the size of a value: strings concatenated in a long
    expression would otherwise grow without bound."""
    if len(text) > VALUE_BYTES // 4 and (size := len(text.encode())) > VALUE_BYTES:
        raise _fail(node, f"a string of {size:,} bytes, more than the limit of {VALUE_BYTES:,}")
    return text


def _size(v: Any) -> int:
    """About the bytes of a value's JSON text; strings are counted by their characters."""
    if isinstance(v, str):
        return len(v)
    if isinstance(v, list):
        return 2 + sum(_size(x) + 1 for x in v)
    if isinstance(v, dict):
        return 2 + sum(len(k) + 4 + _size(x) for k, x in v.items())
    return 8


def _as_value(v: Any, node: Expression) -> values_pb2.Value:
    def check(x: Any) -> None:
        if _is_number(x) and not _in_range(Decimal(x)):
            raise _fail(node, "number out of range")
        if isinstance(x, list):
            for y in x:
                check(y)
        elif isinstance(x, dict):
            for y in x.values():
                check(y)

    check(v)
    with decimal.localcontext(_TEXT_CONTEXT):
        return to_value(v)


def _as_text(v: Any, node: Expression) -> str:
    return value_text(_as_value(v, node))


class _Evaluator:
    def __init__(self, scope: Scope) -> None:
        self.scope = scope

    def lookup(self, node: Expression, name: str, label: str = "", job: str = "") -> Any:
        v = self.scope.variable(name, label, job) if (label or job) else self.scope.variable(name)
        if v is None or v.WhichOneof("kind") is None:
            return None
        return _python(v, node, name)

    def missing(self, node: Expression, name: str, label: str = "", job: str = "") -> ExpressionError:
        where = (f" at label {label!r}" if label else "") + (f" of job {job!r}" if job else "")
        return _fail(node, f"no variable {name!r}{where}")

    def eval(self, e: Expression) -> Any:
        if isinstance(e, NumberLiteral):
            return e.value
        if isinstance(e, (StringLiteral, BooleanLiteral)):
            return e.value
        if isinstance(e, VariableRef):
            v = self.lookup(e, e.name)
            if v is None:
                raise self.missing(e, e.name)
            return v
        if isinstance(e, Interpolation):
            return _bounded(
                "".join(p if isinstance(p, str) else _as_text(self.eval(p), p) for p in e.parts), e
            )
        if isinstance(e, ListLiteral):
            return [self.eval(x) for x in e.items]
        if isinstance(e, VariableFunction):
            name = self.eval(e.key)
            if not isinstance(name, str):
                raise _fail(e.key, f"variable() needs a string name, got {_type_name(name)}")
            v = self.lookup(e, name, e.label, e.job)
            if v is not None:
                return v
            if e.default is None:
                raise self.missing(e, name, e.label, e.job)
            return self.eval(e.default)
        if isinstance(e, FunctionCall):
            return self.function(e, self.eval(e.argument))
        if isinstance(e, UnaryOp):
            v = self.eval(e.operand)
            if e.op == "!":
                if not isinstance(v, bool):
                    raise _fail(e, f"'!' needs a boolean, got {_type_name(v)}")
                return not v
            if not _is_number(v):
                raise _fail(e, f"'-' needs a number, got {_type_name(v)}")
            return self.arithmetic(e, NUMBER_CONTEXT.minus, v)
        if isinstance(e, BinaryOp):
            return self.binary(e)
        raise TypeError(f"not an expression node: {e!r}")

    def binary(self, e: BinaryOp) -> Any:
        op = e.op
        left = self.eval(e.left)
        if op in ("&&", "||"):
            if not isinstance(left, bool):
                raise _fail(e, f"{op!r} needs booleans, got {_type_name(left)} on the left")
            if left == (op == "||"):
                return left
            right = self.eval(e.right)
            if not isinstance(right, bool):
                raise _fail(e, f"{op!r} needs booleans, got {_type_name(right)} on the right")
            return right
        right = self.eval(e.right)
        if op == "==":
            return _equal(left, right)
        if op == "!=":
            return not _equal(left, right)
        if op == "in":
            if not isinstance(right, list):
                raise _fail(e, f"'in' needs a list on the right, got {_type_name(right)}")
            return any(_equal(left, x) for x in right)
        if op == "++":
            return _bounded(_as_text(left, e) + _as_text(right, e), e)
        if op in ("<", "<=", ">", ">="):
            if not (
                (_is_number(left) and _is_number(right)) or (isinstance(left, str) and isinstance(right, str))
            ):
                raise _fail(
                    e,
                    f"{op!r} compares two numbers or two strings, "
                    f"got {_type_name(left)} and {_type_name(right)}",
                )
            if op == "<":
                return bool(left < right)
            if op == "<=":
                return bool(left <= right)
            if op == ">":
                return bool(left > right)
            return bool(left >= right)
        if op == "+" and isinstance(left, str) and isinstance(right, str):
            return _bounded(left + right, e)
        if not (_is_number(left) and _is_number(right)):
            need = "two numbers or two strings" if op == "+" else "two numbers"
            raise _fail(e, f"{op!r} needs {need}, got {_type_name(left)} and {_type_name(right)}")
        operation = {
            "+": NUMBER_CONTEXT.add,
            "-": NUMBER_CONTEXT.subtract,
            "*": NUMBER_CONTEXT.multiply,
            "/": NUMBER_CONTEXT.divide,
        }[op]
        return self.arithmetic(e, operation, left, right)

    @staticmethod
    def arithmetic(e: Expression, operation: Callable[..., Decimal], *args: Any) -> Decimal:
        try:
            return operation(*(Decimal(a) for a in args))
        except decimal.DivisionByZero:
            raise _fail(e, "division by zero") from None
        except decimal.Overflow:
            raise _fail(e, "number out of range") from None
        except decimal.InvalidOperation:
            raise _fail(e, "undefined arithmetic (0 / 0)") from None

    def function(self, e: FunctionCall, v: Any) -> Any:
        f = e.function
        if f == "toString":
            return _as_text(v, e)
        if f == "toNumber":
            if _is_number(v):
                return v
            if isinstance(v, str) and _NUMBER_TEXT.fullmatch(v):
                d = Decimal(v)
                if _in_range(d):
                    return d
            raise _fail(e, f"toNumber: not a number: {_as_text(v, e)!r} ({_type_name(v)})")
        if f == "toBoolean":
            if isinstance(v, bool):
                return v
            if v in ("true", "false"):
                return v == "true"
            raise _fail(e, f"toBoolean: not 'true' or 'false': {_as_text(v, e)!r} ({_type_name(v)})")
        if f == "length":
            if isinstance(v, (str, list)):
                return Decimal(len(v))
            raise _fail(e, f"length needs a string or a list, got {_type_name(v)}")
        raise _fail(e, f"unknown function {f!r}")


def _parsed(text_or_expression: str | Expression) -> Expression:
    if isinstance(text_or_expression, str):
        return parse(text_or_expression)
    if not text_or_expression.source:
        # Built by hand, so without positions: its canonical text has them for error messages.
        return parse(str(text_or_expression))
    return text_or_expression


def evaluate(text_or_expression: str | Expression, scope: Scope) -> values_pb2.Value:
    """The expression's value; ExpressionError on type errors and missing variables, and for a
    value larger than a variable may be (a list of the same long string many times)."""
    e = _parsed(text_or_expression)
    v = _Evaluator(scope).eval(e)
    if (size := _size(v)) > VALUE_BYTES:
        raise _fail(e, f"a value of {size:,} bytes, more than the limit of {VALUE_BYTES:,}")
    return _as_value(v, e)


def evaluate_bool(text_or_expression: str | Expression, scope: Scope) -> bool:
    """An If condition's value; ExpressionError unless it is a boolean."""
    e = _parsed(text_or_expression)
    v = _Evaluator(scope).eval(e)
    if not isinstance(v, bool):
        raise ExpressionError(f"expected a boolean, got {_type_name(v)}", position=0, expression=e.source)
    return v


def evaluate_text(text_or_expression: str | Expression, scope: Scope | Mapping[str, values_pb2.Value]) -> str:
    """The expression's value as text (for environment variables and arguments)."""
    s = scope if isinstance(scope, Scope) else MappingScope(scope)
    return value_text(evaluate(text_or_expression, s))
