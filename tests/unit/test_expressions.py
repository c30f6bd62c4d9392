"""The workflow expression language: each construct, precedence, error positions, and properties
(printing round-trips, Decimal arithmetic, boolean logic, junk never crashes the parser)."""

from __future__ import annotations

import decimal
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gen.ostinato.common.v1 import values_pb2
from ostinato.errors import InvalidArgument
from ostinato.workflow.expressions import (
    NUMBER_CONTEXT,
    BinaryOp,
    BooleanLiteral,
    Expression,
    ExpressionError,
    FunctionCall,
    Interpolation,
    ListLiteral,
    MappingScope,
    NumberLiteral,
    StringLiteral,
    UnaryOp,
    VariableFunction,
    VariableRef,
    check,
    evaluate,
    evaluate_bool,
    evaluate_text,
    parse,
)
from ostinato.workflow.values import from_value, to_value, value_text

VARIABLES = {
    "n": to_value(7),
    "half": to_value(Decimal("0.5")),
    "s": to_value("hi"),
    "t": to_value("true"),
    "num": to_value("42"),
    "yes": to_value(True),
    "l": to_value([1, "a"]),
    "o": to_value({"k": 1}),
    "returnCode": to_value(3),
    "a.b-c": to_value("dotted"),
}


class LabelledScope(MappingScope):
    """Plain variables, plus values returned at label L and by job J."""

    def variable(self, name: str, label: str = "", job: str = "") -> values_pb2.Value | None:
        if label == "L" and name == "x":
            return to_value("at L")
        if job == "J" and name == "x":
            return to_value("by J")
        return MappingScope.variable(self, name, label, job)


SCOPE = LabelledScope(VARIABLES)


def value(text: str) -> Any:
    return from_value(evaluate(text, SCOPE))


# ------------------------------------------------------------------------------------- constructs


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # literals
        ("3", 3),
        ("-2.5", Decimal("-2.5")),
        ("007", 7),
        ("true", True),
        ("false", False),
        ("'text'", "text"),
        ("'it\\'s'", "it's"),
        ("'back\\\\slash'", "back\\slash"),
        ("'C:\\temp'", "C:\\temp"),  # other backslashes are literal in single quotes
        ("'no $n here'", "no $n here"),
        ('"plain"', "plain"),
        ('"n=$n, s=${s}!"', "n=7, s=hi!"),
        ('"\\$n \\"q\\" \\\\ \\t"', '$n "q" \\ \t'),
        ('"${a.b-c}"', "dotted"),
        ("[1, 'a', true]", [1, "a", True]),
        ("[]", []),
        # variables
        ("$n", 7),
        ("${s}", "hi"),
        ("${a.b-c}", "dotted"),
        ("$returnCode", 3),
        ("$rc", 3),  # MappingScope answers the alias
        ("$l", [1, "a"]),
        ("$o", {"k": 1}),
        # variable()
        ("variable('n')", 7),
        ("variable(key='s')", "hi"),
        ("variable('zz', default=5)", 5),
        ("variable('n', default=$missing)", 7),  # default only evaluated when needed
        ("variable('x', label='L')", "at L"),
        ("variable('x', label=L)", "at L"),  # JS7 writes labels unquoted
        ("variable('x', job='J')", "by J"),
        ("variable('x', label='M', default='none')", "none"),
        ("variable('a' ++ '.b-c')", "dotted"),
        # conversions, as functions and as methods
        ("toNumber('3.50') + 1", Decimal("4.5")),
        ("$num.toNumber", 42),
        ("$num.toNumber()", 42),
        ("toNumber(-1)", -1),
        ("toBoolean('true')", True),
        ("$t.toBoolean", True),
        ("toBoolean(false)", False),
        ("toString(1.50)", "1.5"),
        ("$yes.toString", "true"),
        ("toString([1, 'a'])", value_text(to_value([1, "a"]))),
        ("length('abc')", 3),
        ("$l.length", 2),
        ("$s.length.toString", "2"),
        # arithmetic
        ("1 + 2", 3),
        ("0.1 + 0.2", Decimal("0.3")),
        ("$n - 10", -3),
        ("$half * 4", 2),
        ("1 / 4", Decimal("0.25")),
        ("2 / 3", Decimal("0.6666666666666666666666666666666667")),
        ("-$n", -7),
        ("- 3", -3),
        ("-(3)", -3),
        ("--3", 3),
        ("99999999999999999999 + 1", 100000000000000000000),
        # 40 digits, rounded to 34 significant ones (Decimal128)
        ("99999999999999999999 * 99999999999999999999", 9999999999999999999800000000000000000000),
        # strings
        ("'a' + 'b'", "ab"),
        ("'a' ++ 1 ++ true", "a1true"),
        ("1 ++ 2", "12"),
        ("'n=' ++ ($n + 1)", "n=8"),
        # comparison
        ("1 < 2", True),
        ("2 <= 2", True),
        ("10 > 9", True),  # numeric, not lexicographic
        ("'10' > '9'", False),  # lexicographic
        ("1.0 >= 1", True),
        ("1.0 == 1", True),
        ("'a' == 'a'", True),
        ("1 == '1'", False),  # across types: false, not an error
        ("true == 1", False),
        ("1 != '1'", True),
        ("[1, 'a'] == $l", True),
        ("[1, 'a'] == ['a', 1]", False),
        ("$o == $o", True),
        ("$n in [1, 7]", True),
        ("'7' in [1, 7]", False),
        ("[1] in [[1], 2]", True),
        ("1 in []", False),
        # logic
        ("true && false", False),
        ("true || false", True),
        ("!true", False),
        ("!!true", True),
        ("false && $missing", False),  # short-circuit
        ("true || $missing", True),
        ("$rc == 0 || $rc == 3 && $s == 'hi'", True),
    ],
)
def test_construct(text: str, expected: Any) -> None:
    got = value(text)
    assert got == expected and type(got) is type(expected), (got, expected)


# ------------------------------------------------------------------------------------- precedence


@pytest.mark.parametrize(
    ("text", "same_as", "result"),
    [
        ("1 + 2 * 3", "1 + (2 * 3)", 7),
        ("2 * 3 + 1", "(2 * 3) + 1", 7),
        ("10 - 4 - 3", "(10 - 4) - 3", 3),
        ("8 / 4 / 2", "(8 / 4) / 2", 1),
        ("-2 * 3", "(-2) * 3", -6),
        ("-$n * 2", "(-$n) * 2", -14),
        ("!true == false", "(!true) == false", True),
        ("1 < 2 == true", "(1 < 2) == true", True),
        ("1 + 1 < 3", "(1 + 1) < 3", True),
        ("'a' ++ 1 + 2", "('a' ++ 1) + 2", None),  # type error: string + number
        ("1 + 2 ++ 'a'", "(1 + 2) ++ 'a'", "3a"),
        ("true || false && false", "true || (false && false)", True),
        ("false && true || true", "(false && true) || true", True),
        ("true == false || true", "(true == false) || true", True),
        ("1 + 1 in [2]", "(1 + 1) in [2]", True),
        ("1 in [1] == true", "(1 in [1]) == true", True),
        ("-$num.toNumber", "-($num.toNumber)", -42),
        ("!$t.toBoolean", "!toBoolean($t)", False),
        ("$n.toString ++ 'x'", "toString($n) ++ 'x'", "7x"),
    ],
)
def test_precedence(text: str, same_as: str, result: Any) -> None:
    assert parse(text) == parse(same_as)
    if result is None:
        with pytest.raises(ExpressionError):
            evaluate(text, SCOPE)
    else:
        assert value(text) == result


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("1+2*3", "1 + 2 * 3"),
        ("(1+2)*3", "(1 + 2) * 3"),
        ("1-(2-3)", "1 - (2 - 3)"),
        ("(1-2)-3", "1 - 2 - 3"),
        ("- 3", "-3"),
        ("-(3)", "-(3)"),
        ("-(-3)", "--3"),
        ("!(1 < 2)", "!(1 < 2)"),
        ('"x"', "'x'"),
        ('"a $n\\tb"', '"a ${n}\\tb"'),
        ("${n}", "$n"),
        ("${a.b}", "${a.b}"),
        ("$n.toNumber", "toNumber($n)"),
        ("variable(key='x', label=L, default=1)", "variable('x', label='L', default=1)"),
        ("[ 1 ,2 ]", "[1, 2]"),
        ("'it\\'s'", "'it\\'s'"),
    ],
)
def test_canonical_text(text: str, canonical: str) -> None:
    assert str(parse(text)) == canonical
    assert parse(canonical) == parse(text)


# ----------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("text", "reason", "position"),
    [
        ("", "empty expression", 0),
        ("($n == 1", "expected ')'", 8),
        ("hello", "unknown name 'hello'", 0),
        ("$n +", "expected a value", 4),
        ("1 +* 2", "expected a value but found '*'", 3),
        ("1 2", "unexpected '2' after a complete expression", 2),
        ("1e3", "unexpected 'e3'", 1),
        ("'abc", "unterminated string", 0),
        ('1 == "abc', "unterminated string", 5),
        ('"a $ b"', "expected a variable name after '$'", 4),
        ("$", "expected a variable name after '$'", 1),
        ("${a", "expected '}'", 3),
        ("${}", "expected a variable name after '${'", 2),
        ("$n | $s", "unexpected character '|'", 3),
        ("$n & $s", "unexpected character '&'", 3),
        ("1 ? 2", "unexpected character '?'", 2),
        ('"\\q"', "unknown escape '\\q'", 1),
        ("toNumber 1", "expected '(' but found '1'", 9),
        ("toNumber(1", "expected ')'", 10),
        ("$n.foo", "unknown method 'foo'", 3),
        ("$n.", "expected a method", 3),
        ("[1, 2", "expected ']'", 5),
        ("[1 2]", "expected ']' but found '2'", 3),
        ("variable()", "variable() needs the variable's name", 0),
        ("variable('a', colour='red')", "unknown argument 'colour'", 14),
        ("variable('a', label='L', label='M')", "argument 'label' given twice", 25),
        ("variable('a', 'b')", "expected label=, job= or default=", 14),
        ("variable('a', label=1)", "expected the label as a string or name", 20),
        ("variable", "expected '('", 8),
    ],
)
def test_syntax_error_names_position(text: str, reason: str, position: int) -> None:
    with pytest.raises(ExpressionError) as caught:
        parse(text)
    e = caught.value
    assert e.position == position and e.expression == text
    assert reason in e.reason
    assert str(e) == f"{e.reason} at position {position} in {text!r}"


def test_error_message_format() -> None:
    with pytest.raises(ExpressionError, match=r"^expected '\)' at position 8 in '\(\$a == 1'$"):
        parse("($a == 1")


@pytest.mark.parametrize(
    ("text", "reason", "position"),
    [
        ("$missing + 1", "no variable 'missing'", 0),
        ("1 + $missing", "no variable 'missing'", 4),
        ('"a ${b}"', "no variable 'b'", 3),
        ("variable('x', label='M')", "no variable 'x' at label 'M'", 0),
        ("variable('x', job='K')", "no variable 'x' of job 'K'", 0),
        ("variable(1)", "variable() needs a string name, got number", 9),
        ("1 + 'a'", "'+' needs two numbers or two strings, got number and string", 2),
        ("'a' - 'b'", "'-' needs two numbers, got string and string", 4),
        ("$n * true", "'*' needs two numbers, got number and boolean", 3),
        ("1 < 'a'", "'<' compares two numbers or two strings, got number and string", 2),
        ("true >= false", "'>=' compares two numbers or two strings, got boolean and boolean", 5),
        ("!1", "'!' needs a boolean, got number", 0),
        ("-'a'", "'-' needs a number, got string", 0),
        ("1 && true", "'&&' needs booleans, got number on the left", 2),
        ("false || 'x'", "'||' needs booleans, got string on the right", 6),
        ("1 / 0", "division by zero", 2),
        ("0 / 0", "undefined arithmetic", 2),
        ("1 in 'abc'", "'in' needs a list on the right, got string", 2),
        ("toNumber('x1')", "toNumber: not a number: 'x1'", 0),
        ("$s.toNumber", "toNumber: not a number: 'hi'", 2),
        ("toNumber(true)", "toNumber: not a number: 'true' (boolean)", 0),
        ("toBoolean('yes')", "toBoolean: not 'true' or 'false'", 0),
        ("length(1)", "length needs a string or a list, got number", 0),
        ("$o.length", "length needs a string or a list, got object", 2),
    ],
)
def test_evaluation_error_names_position(text: str, reason: str, position: int) -> None:
    with pytest.raises(ExpressionError) as caught:
        evaluate(text, SCOPE)
    assert reason in caught.value.reason
    assert caught.value.position == position
    assert str(caught.value).endswith(f"at position {position} in {text!r}")


def test_check_names_field_and_position() -> None:
    check("$n + 1", "arguments.x")
    with pytest.raises(InvalidArgument) as caught:
        check("$n +", "arguments.x")
    assert caught.value.field == "arguments.x"
    assert str(caught.value) == "arguments.x: expected a value at position 4 in '$n +'"
    assert isinstance(caught.value, ExpressionError) and caught.value.position == 4


def test_evaluate_bool() -> None:
    assert evaluate_bool("$n > 1", SCOPE) is True
    assert evaluate_bool(parse("$s == 'x'"), SCOPE) is False
    with pytest.raises(ExpressionError, match="expected a boolean, got number at position 0"):
        evaluate_bool("$n + 1", SCOPE)


def test_evaluate_text_accepts_a_mapping_as_callers_do() -> None:
    variables = {"greeting": to_value("hello"), "n": to_value(7), "x": to_value(Decimal("1.50"))}
    assert evaluate_text("$greeting", variables) == "hello"
    assert evaluate_text("$name", {"name": to_value("world")}) == "world"
    assert evaluate_text("$n", variables) == "7"
    assert evaluate_text("$x", variables) == "1.5"
    assert evaluate_text("'text'", variables) == "text"
    assert evaluate_text("true", variables) == "true"
    assert evaluate_text("$n + 1", SCOPE) == "8"
    with pytest.raises(ExpressionError, match="no variable 'nope'"):
        evaluate_text("$nope", variables)
    with pytest.raises(ExpressionError, match="unknown name 'hello' .* at position 0"):
        evaluate_text("hello", variables)


def test_bad_numbers_in_variables_are_expression_errors() -> None:
    for bad in ("NaN", "Infinity", "abc", "1E+999999"):
        with pytest.raises(ExpressionError, match="variable 'v' holds"):
            evaluate("$v + 1", MappingScope({"v": values_pb2.Value(number=bad)}))


def test_huge_results_are_exact_or_out_of_range() -> None:
    big = "9" * 40
    assert evaluate(big, SCOPE).number == big  # literals stay exact until an operation
    assert Decimal(evaluate(f"{big} * 1", SCOPE).number) == Decimal(big).normalize(NUMBER_CONTEXT)
    squares = " * ".join(["10000000000000000000000000000000000"] * 200)
    with pytest.raises(ExpressionError, match="number out of range"):
        evaluate(squares, SCOPE)


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    with pytest.raises(ExpressionError, match="nested"):
        parse("(" * 500 + "1" + ")" * 500)
    with pytest.raises(ExpressionError, match="nested"):
        parse(" + ".join(["1"] * 1000))
    assert value("!" * 100 + "true") is True
    assert value(" + ".join(["1"] * 150)) == 150


def test_parse_is_cached_and_ast_immutable() -> None:
    e = parse("$n + 1")
    assert parse("$n + 1") is e
    with pytest.raises(AttributeError):
        e.source = "changed"  # type: ignore[misc]
    assert hash(e) == hash(parse("$n+1"))


def test_positions_do_not_take_part_in_equality() -> None:
    assert (
        parse("$n+1") == parse("  $n   +   1") == BinaryOp("+", VariableRef("n"), NumberLiteral(Decimal(1)))
    )


# ------------------------------------------------------------------------------------- properties

NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,5}", fullmatch=True)
BRACED_NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.\-]{0,5}", fullmatch=True)
NUMBERS = st.from_regex(r"-?[0-9]{1,12}(\.[0-9]{1,8})?", fullmatch=True).map(Decimal)
TEXT = st.text(max_size=6)


def _interpolation(parts: list[str | VariableRef]) -> Expression:
    merged: list[str | VariableRef] = []
    for p in parts:
        if isinstance(p, str) and merged and isinstance(merged[-1], str):
            merged[-1] += p
        elif p != "":
            merged.append(p)
    if all(isinstance(p, str) for p in merged):
        return StringLiteral("".join(str(p) for p in merged))
    return Interpolation(tuple(merged))


VARIABLES_REFS = st.builds(VariableRef, NAMES | BRACED_NAMES)
LEAVES = st.one_of(
    st.builds(NumberLiteral, NUMBERS),
    st.builds(StringLiteral, TEXT),
    st.builds(BooleanLiteral, st.booleans()),
    VARIABLES_REFS,
    st.lists(st.one_of(TEXT, VARIABLES_REFS), max_size=4).map(_interpolation),
)
BINARY_OPS = st.sampled_from(["||", "&&", "==", "!=", "<", "<=", ">", ">=", "in", "++", "+", "-", "*", "/"])


def _compound(children: st.SearchStrategy[Expression]) -> st.SearchStrategy[Expression]:
    return st.one_of(
        st.builds(BinaryOp, BINARY_OPS, children, children),
        st.builds(UnaryOp, st.sampled_from(["!", "-"]), children),
        st.builds(lambda xs: ListLiteral(tuple(xs)), st.lists(children, max_size=3)),
        st.builds(FunctionCall, st.sampled_from(["toNumber", "toBoolean", "toString", "length"]), children),
        st.builds(VariableFunction, children, TEXT, TEXT, st.none() | children),
    )


ASTS = st.recursive(LEAVES, _compound, max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(ASTS)
def test_printed_ast_parses_back_to_itself(ast: Expression) -> None:
    assert parse(str(ast)) == ast


def _arithmetic(children: st.SearchStrategy[tuple[str, str]]) -> st.SearchStrategy[tuple[str, str]]:
    """Pairs of (expression text, the same in Python over Decimal `D`); same precedence in both."""
    binary = st.tuples(children, st.sampled_from(["+", "-", "*", "/"]), children).map(
        lambda t: (f"{t[0][0]} {t[1]} {t[2][0]}", f"{t[0][1]} {t[1]} {t[2][1]}")
    )
    return st.one_of(
        binary,
        children.map(lambda c: (f"({c[0]})", f"({c[1]})")),
        children.map(lambda c: (f"-{c[0]}", f"-{c[1]}")),
    )


ARITHMETIC = st.recursive(
    st.from_regex(r"-?[0-9]{1,8}(\.[0-9]{1,6})?", fullmatch=True).map(lambda n: (n, f"D('{n}')")),
    _arithmetic,
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(ARITHMETIC)
def test_arithmetic_equals_python_decimal(pair: tuple[str, str]) -> None:
    text, python = pair
    try:
        with decimal.localcontext(NUMBER_CONTEXT):
            expected = eval(python, {"D": Decimal})  # noqa: S307 - generated from digits and operators
    except decimal.DecimalException:
        with pytest.raises(ExpressionError):
            evaluate(text, SCOPE)
        return
    assert Decimal(evaluate(text, SCOPE).number) == expected


BOOLEANS = st.recursive(
    st.builds(BooleanLiteral, st.booleans()),
    lambda children: st.one_of(
        st.builds(UnaryOp, st.just("!"), children),
        st.builds(BinaryOp, st.sampled_from(["&&", "||", "==", "!="]), children, children),
    ),
    max_leaves=16,
)


def _python_bool(e: Expression) -> bool:
    if isinstance(e, BooleanLiteral):
        return e.value
    if isinstance(e, UnaryOp):
        return not _python_bool(e.operand)
    assert isinstance(e, BinaryOp)
    left, right = _python_bool(e.left), _python_bool(e.right)
    return {"&&": left and right, "||": left or right, "==": left == right, "!=": left != right}[e.op]


@settings(max_examples=300, deadline=None)
@given(BOOLEANS)
def test_boolean_logic_equals_python(ast: Expression) -> None:
    expected = _python_bool(ast)
    assert evaluate_bool(ast, SCOPE) is expected
    assert evaluate_bool(str(ast), SCOPE) is expected


JUNK_PIECES = list("$(){}[]'\"\\.,=!<>+-*/|&_ 0123456789") + [
    "true",
    " in ",
    "n",
    "s",
    "x",
    "toNumber",
    "variable",
    "label=",
    "default=",
    "&&",
    "++",
    "==",
]
JUNK = st.lists(st.sampled_from(JUNK_PIECES) | st.characters(), max_size=25).map("".join)


@settings(max_examples=500, deadline=None)
@given(JUNK)
def test_junk_raises_only_expression_error(text: str) -> None:
    try:
        e = parse(text)
    except ExpressionError as error:
        assert 0 <= error.position <= len(text)
        return
    assert parse(str(e)) == e
    try:
        evaluate(e, SCOPE)
    except ExpressionError:
        pass
