"""One small, safe expression language for alert rules and review policies.

    drift_share > 0.3 and n >= 500
    error_rate > 0.05 or p99_ms > 250
    confidence < 0.7
    inputs.amount > 50000 and output == 'deny'
    route in ['fallback:rules', 'default']

An expression is parsed once (with Python's own parser, into a syntax tree that is then checked
against a short list of allowed forms) and compiled into plain closures; it is never passed to
``eval``. Allowed: numbers, strings, true/false/null (also Python's spellings), names and dotted
names (looked up in the context; a missing name is null), comparisons (``< <= > >= == != in``,
``not in``, chained), ``and``, ``or``, ``not``, ``+ - * /`` and unary minus, and lists of
literals. Comparisons with null are false, so a metric that is not there never fires a rule.
Anything else (calls, subscripts, lambdas, attribute tricks) is refused with the position.

Resources are bounded, so a rule cannot exhaust the process that evaluates it: at most
:data:`MAX_LENGTH` characters, :data:`MAX_NODES` syntax nodes nested :data:`MAX_DEPTH` deep,
string constants of :data:`MAX_STRING` characters; arithmetic is on numbers only (``'a' * 9``
is null) and a result whose magnitude passes :data:`MAX_MAGNITUDE` is null.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping
from typing import Any

from shipway.errors import ExpressionError

Context = Mapping[str, Any]

MAX_LENGTH = 2000
MAX_NODES = 400
MAX_DEPTH = 30
MAX_STRING = 1000
MAX_MAGNITUDE = 1e18
_Fn = Callable[[Context], Any]

_NAMES = {
    "true": True,
    "false": False,
    "null": None,
    "none": None,
    "True": True,
    "False": False,
    "None": None,
}

_CMP: dict[type, Callable[[Any, Any], bool]] = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}
_ARITH: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def _lookup(path: tuple[str, ...]) -> _Fn:
    head, rest = path[0], path[1:]

    def get(ctx: Context) -> Any:
        cur = ctx.get(head)
        for part in rest:
            if isinstance(cur, Mapping):
                cur = cur.get(part)
            else:
                return None
        return cur

    return get


def _dotted(node: ast.AST) -> tuple[str, ...] | None:
    if isinstance(node, ast.Name):
        return (node.id,)
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else (*base, node.attr)
    return None


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _bounded(value: Any) -> Any:
    """An arithmetic result, or null when it is too large to be a figure."""
    if _number(value) and not -MAX_MAGNITUDE <= value <= MAX_MAGNITUDE:
        return None
    return value


def _safe_cmp(fn: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def cmp(a: Any, b: Any) -> bool:
        if a is None or b is None:
            if fn is operator.eq:
                return a is b
            if fn is operator.ne:
                return a is not b
            return False
        try:
            return bool(fn(a, b))
        except TypeError:
            return False

    return cmp


class Expression:
    """A compiled expression: ``Expression("n > 5")(context) -> value``."""

    def __init__(self, source: str) -> None:
        self.source = source
        if len(source) > MAX_LENGTH:
            raise ExpressionError(
                f"the expression has {len(source)} characters; at most {MAX_LENGTH} are allowed"
            )
        try:
            tree = ast.parse(source.strip(), mode="eval")
        except SyntaxError as exc:
            raise ExpressionError(
                f"{source[:80]!r} is not a valid expression: {exc.msg} at column {exc.offset}"
            ) from None
        except (RecursionError, MemoryError):
            raise ExpressionError("the expression is nested too deeply to read") from None
        nodes = sum(1 for _ in ast.walk(tree))
        if nodes > MAX_NODES:
            raise ExpressionError(
                f"the expression has {nodes} parts; at most {MAX_NODES} are allowed"
            )
        self.names: set[str] = set()
        self._fn = self._compile(tree.body, 0)

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"

    def __call__(self, context: Context) -> Any:
        return self._fn(context)

    def test(self, context: Context) -> bool:
        """The expression as a condition (a null or failing comparison is false)."""
        try:
            return bool(self._fn(context))
        except (TypeError, ZeroDivisionError):
            return False

    def _refuse(self, node: ast.AST, what: str) -> ExpressionError:
        col = getattr(node, "col_offset", None)
        where = f" at column {col + 1}" if col is not None else ""
        return ExpressionError(f"{self.source[:80]!r}: {what} is not allowed{where}")

    def _compile(self, node: ast.AST, depth: int) -> _Fn:
        if depth > MAX_DEPTH:
            raise ExpressionError(
                f"the expression is nested more than {MAX_DEPTH} levels deep; simplify it"
            )
        depth += 1
        if isinstance(node, ast.Constant):
            if not isinstance(node.value, int | float | str | bool) and node.value is not None:
                raise self._refuse(node, f"the constant {str(node.value)[:40]!r}")
            if isinstance(node.value, str) and len(node.value) > MAX_STRING:
                raise self._refuse(node, f"a string of more than {MAX_STRING} characters")
            if _number(node.value) and _bounded(node.value) is None:
                raise self._refuse(node, f"a number beyond {MAX_MAGNITUDE:g}")
            value = node.value
            return lambda _ctx: value
        if isinstance(node, ast.Name) and node.id in _NAMES:
            value = _NAMES[node.id]
            return lambda _ctx: value
        path = _dotted(node)
        if path is not None:
            if any(p.startswith("_") for p in path):
                raise self._refuse(node, "a name starting with '_'")
            self.names.add(".".join(path))
            return _lookup(path)
        if isinstance(node, ast.List | ast.Tuple | ast.Set):
            items = [self._compile(e, depth) for e in node.elts]
            return lambda ctx: [f(ctx) for f in items]
        if isinstance(node, ast.BoolOp):
            parts = [self._compile(v, depth) for v in node.values]
            if isinstance(node.op, ast.And):
                return lambda ctx: all(bool(f(ctx)) for f in parts)
            return lambda ctx: any(bool(f(ctx)) for f in parts)
        if isinstance(node, ast.UnaryOp):
            inner = self._compile(node.operand, depth)
            if isinstance(node.op, ast.Not):
                return lambda ctx: not inner(ctx)
            if isinstance(node.op, ast.USub):
                return lambda ctx: None if (v := inner(ctx)) is None else -v
            if isinstance(node.op, ast.UAdd):
                return inner
            raise self._refuse(node, "this unary operator")
        if isinstance(node, ast.BinOp):
            op = _ARITH.get(type(node.op))
            if op is None:
                raise self._refuse(node, "this operator")
            left, right = self._compile(node.left, depth), self._compile(node.right, depth)

            def arith(ctx: Context) -> Any:
                a, b = left(ctx), right(ctx)
                if not (_number(a) and _number(b)):
                    return None  # arithmetic is on numbers: 'a' * 9 is null, not a big string
                return _bounded(op(a, b))

            return arith
        if isinstance(node, ast.Compare):
            first = self._compile(node.left, depth)
            ops = []
            for o, comp in zip(node.ops, node.comparators, strict=True):
                fn = _CMP.get(type(o))
                if fn is None:
                    raise self._refuse(node, "'is' (use == or !=)")
                ops.append((_safe_cmp(fn), self._compile(comp, depth)))

            def compare(ctx: Context) -> bool:
                a = first(ctx)
                for fn, right in ops:
                    b = right(ctx)
                    if not fn(a, b):
                        return False
                    a = b
                return True

            return compare
        raise self._refuse(node, type(node).__name__.lower())


__all__ = ["Expression", "ExpressionError"]
