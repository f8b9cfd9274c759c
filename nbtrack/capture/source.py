"""What a cell's source says it does: which names it binds, to what kind of expression, which it
reads, what it fits. Pure AST analysis; the cell is never evaluated again.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass, field
from typing import Any

FIT_METHODS = frozenset({"fit", "fit_transform", "fit_predict", "partial_fit"})
# Names the shell itself binds in the user namespace (no cell defines them): never params,
# metrics or data, never hidden state.
SHELL_NAMES = frozenset({"In", "Out", "get_ipython", "display", "exit", "quit", "open"})
_UNSET = object()


@dataclass(frozen=True)
class CellSyntax:
    """The names a cell's code binds and reads, as far as its source shows."""

    parsed: bool = True
    error: SyntaxError | None = None  # why the source does not parse
    literal_bindings: dict[str, Any] = field(default_factory=dict)
    computed_names: tuple[str, ...] = ()
    loop_variables: frozenset[str] = frozenset()
    read_names: tuple[str, ...] = ()
    # estimator name -> name of the first argument given to its fit call (None when not a plain name)
    fitted: dict[str, str | None] = field(default_factory=dict)
    uses_mlflow: bool = False
    starts_own_run: bool = False

    @property
    def bound_names(self) -> tuple[str, ...]:
        """Every name the cell binds at notebook level, literal or computed, in order."""
        names = list(self.literal_bindings)
        names += [n for n in self.computed_names if n not in self.literal_bindings]
        return tuple(names)


def is_shell_name(name: str) -> bool:
    """Whether the shell owns ``name``: one of :data:`SHELL_NAMES`, or private (``_``, ``_i3``)."""
    return name in SHELL_NAMES or name.startswith("_")


def analyze(source: str) -> CellSyntax:
    r"""Analyze Python source (IPython syntax already transformed).

    >>> analyze("C = 0.1\\nacc = model.score(X, y)").literal_bindings
    {'C': 0.1}
    """
    try:
        # As IPython compiles cells: top-level await is allowed.
        tree = compile(source, "<cell>", "exec",
                       flags=ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
    except SyntaxError as error:
        return CellSyntax(parsed=False, error=error)
    except ValueError:  # null bytes
        return CellSyntax(parsed=False)
    visitor = _BindingVisitor()
    for statement in tree.body:
        visitor.statement(statement)
    reads = _read_names(tree)
    literal = {k: v for k, v in visitor.literals.items() if k not in visitor.computed}
    computed = tuple(dict.fromkeys(n for n in visitor.computed_order if n in visitor.computed))
    return CellSyntax(
        literal_bindings=literal,
        computed_names=computed,
        loop_variables=frozenset(visitor.loop_variables),
        read_names=reads,
        fitted=dict(visitor.fitted),
        uses_mlflow=_uses_mlflow(tree),
        starts_own_run=any(
            isinstance(node, ast.Attribute) and node.attr == "start_run" for node in ast.walk(tree)
        ),
    )


class _BindingVisitor:
    """Walk statements at notebook level (not inside functions or classes) and sort bindings."""

    def __init__(self) -> None:
        self.literals: dict[str, Any] = {}
        self.computed: set[str] = set()
        self.computed_order: list[str] = []
        self.loop_variables: set[str] = set()
        self.fitted: dict[str, str | None] = {}

    def _bind(self, name: str, value: Any = _UNSET) -> None:
        if value is _UNSET:
            self.computed.add(name)
            self.computed_order.append(name)
            self.literals.pop(name, None)
        else:
            self.literals[name] = value
            self.computed.discard(name)

    def statement(self, node: ast.stmt) -> None:
        self._find_fit_calls(node)
        if isinstance(node, ast.Assign):
            for target in node.targets:
                self._assign(target, node.value)
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            self._assign(node.target, node.value)
        elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
            self._bind(node.target.id)
        elif isinstance(node, (ast.For, ast.AsyncFor)):
            self.loop_variables.update(_target_names(node.target))
            for child in node.body + node.orelse:
                self.statement(child)
        elif isinstance(node, (ast.While, ast.If)):
            for child in node.body + node.orelse:
                self.statement(child)
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                if item.optional_vars is not None:
                    for name in _target_names(item.optional_vars):
                        self._bind(name)
            for child in node.body:
                self.statement(child)
        elif isinstance(node, ast.Try) or type(node).__name__ == "TryStar":
            for child in node.body + node.orelse + node.finalbody:
                self.statement(child)
            for handler in node.handlers:
                for child in handler.body:
                    self.statement(child)
        elif isinstance(node, ast.Match):
            for case in node.cases:
                for child in case.body:
                    self.statement(child)
        # Walrus bindings anywhere at this level are computed values.
        for sub in ast.walk(node):
            if isinstance(sub, ast.NamedExpr) and isinstance(sub.target, ast.Name):
                self._bind(sub.target.id)

    def _assign(self, target: ast.expr, value: ast.expr) -> None:
        if isinstance(target, ast.Name):
            literal = _literal(value)
            self._bind(target.id, literal)
            fit_input = _chained_fit_input(value)
            if fit_input is not _UNSET:
                self.fitted[target.id] = fit_input
        elif isinstance(target, (ast.Tuple, ast.List)):
            values = value.elts if isinstance(value, (ast.Tuple, ast.List)) else None
            if values is not None and len(values) == len(target.elts):
                for sub_target, sub_value in zip(target.elts, values, strict=False):
                    self._assign(sub_target, sub_value)
            else:
                for name in _target_names(target):
                    self._bind(name)
        # Attribute and subscript targets change objects, they bind no name.

    def _find_fit_calls(self, node: ast.stmt) -> None:
        for sub in _walk_skipping_scopes(node):
            if (
                isinstance(sub, ast.Call)
                and isinstance(sub.func, ast.Attribute)
                and sub.func.attr in FIT_METHODS
                and isinstance(sub.func.value, ast.Name)
            ):
                receiver = sub.func.value.id
                first = _first_arg_name(sub)
                if receiver not in self.fitted or self.fitted[receiver] is None:
                    self.fitted[receiver] = first


def _literal(value: ast.expr) -> Any:
    try:
        return ast.literal_eval(value)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _UNSET


def _first_arg_name(call: ast.Call) -> str | None:
    if call.args and isinstance(call.args[0], ast.Name):
        return call.args[0].id
    for keyword in call.keywords:
        if keyword.arg == "X" and isinstance(keyword.value, ast.Name):
            return keyword.value.id
    return None


def _chained_fit_input(value: ast.expr) -> Any:
    """For ``m = Model(...).fit(X, y)``: the name of X (None if not a name); else _UNSET."""
    if (
        isinstance(value, ast.Call)
        and isinstance(value.func, ast.Attribute)
        and value.func.attr in FIT_METHODS
        and not isinstance(value.func.value, ast.Name)
    ):
        return _first_arg_name(value)
    return _UNSET


def _target_names(target: ast.expr) -> list[str]:
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, (ast.Tuple, ast.List)):
        return [name for elt in target.elts for name in _target_names(elt)]
    if isinstance(target, ast.Starred):
        return _target_names(target.value)
    return []


def _walk_skipping_scopes(node: ast.AST):
    """ast.walk, but not into function or class bodies (their names are not the notebook's)."""
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        for child in ast.iter_child_nodes(current):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                continue
            stack.append(child)


def _read_names(tree: ast.Module) -> tuple[str, ...]:
    """Every name the cell reads, in order, but for the locals of its functions and comprehensions."""
    return tuple(dict.fromkeys(name for statement in tree.body for name in _loads(statement)))


def _uses_mlflow(tree: ast.Module) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id == "mlflow":
            return True
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "mlflow" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "mlflow":
            return True
    return False


# -- the names a cell defines and reads at notebook level (hidden state, reproduce --minimal) --

@dataclass(frozen=True)
class Names:
    """What a cell does with names at notebook level."""

    defines: frozenset[str]  # names it binds, imports, or changes (``clf.fit(...)``, ``df[c] = v``)
    reads: tuple[str, ...]  # names it uses before binding them itself, in order


# Each tracked cell looks at the whole history: parse each distinct source once per kernel.
@functools.lru_cache(maxsize=4096)
def names(code: str) -> Names:
    r"""The names a cell defines and reads at notebook level.

    >>> n = names("import numpy as np\nx = np.ones(3) * scale\nclf.fit(x)")
    >>> sorted(n.defines), n.reads
    (['clf', 'np', 'x'], ('scale', 'clf'))
    """
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return Names(frozenset(), ())
    bound: set[str] = set()
    reads: list[str] = []
    for statement in tree.body:
        changed = _changed(statement)
        for name in [*_loads(statement), *sorted(changed)]:
            if name not in bound and name not in reads:
                reads.append(name)
        bound |= _stores(statement) | changed
    return Names(frozenset(bound), tuple(reads))


def _stores(node: ast.AST) -> set[str]:
    """Names a statement binds at notebook level (not inside functions, classes, comprehensions)."""
    found: set[str] = set()
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found.add(current.name)
            stack.extend(current.decorator_list)
            continue
        if isinstance(current, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp,
                                ast.GeneratorExp)):
            continue
        if isinstance(current, ast.Name) and isinstance(current.ctx, ast.Store):
            found.add(current.id)
        elif isinstance(current, (ast.Import, ast.ImportFrom)):
            for alias in current.names:
                if alias.name != "*":
                    found.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(current, ast.ExceptHandler) and current.name:
            found.add(current.name)
        stack.extend(ast.iter_child_nodes(current))
    return found


def _changed(statement: ast.stmt) -> set[str]:
    """Names whose object a statement changes in place: ``clf.fit(X)`` on its own line,
    ``df["c"] = ...``, ``model.coef_ = ...``, ``x += 1``.
    """
    changed: set[str] = set()
    if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Call):
        func = statement.value.func
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            changed.add(func.value.id)
    targets: list[ast.expr] = []
    if isinstance(statement, ast.Assign):
        targets = statement.targets
    elif isinstance(statement, (ast.AugAssign, ast.AnnAssign)):
        targets = [statement.target]
    for target in targets:
        base = target
        while isinstance(base, (ast.Attribute, ast.Subscript)):
            base = base.value
        if isinstance(base, ast.Name) and (base is not target or isinstance(statement, ast.AugAssign)):
            changed.add(base.id)
    return changed


def _loads(node: ast.AST) -> list[str]:
    """Names a statement reads, leaving out those local to the functions and comprehensions in it."""
    local: set[str] = set()
    for sub in ast.walk(node):
        if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            arguments = sub.args
            for arg in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs,
                        arguments.vararg, arguments.kwarg]:
                if arg is not None:
                    local.add(arg.arg)
            if not isinstance(sub, ast.Lambda):
                for inner in sub.body:
                    local |= _stores(inner)
        elif isinstance(sub, ast.comprehension):
            local |= {n.id for n in ast.walk(sub.target) if isinstance(n, ast.Name)}
        # Bound by the statement before its body reads them: `for i in ...`, `with ... as f`,
        # `except E as err`.
        elif isinstance(sub, (ast.For, ast.AsyncFor)):
            local |= {n.id for n in ast.walk(sub.target) if isinstance(n, ast.Name)}
        elif isinstance(sub, ast.withitem) and sub.optional_vars is not None:
            local |= {n.id for n in ast.walk(sub.optional_vars) if isinstance(n, ast.Name)}
        elif isinstance(sub, ast.ExceptHandler) and sub.name:
            local.add(sub.name)
    loads = [sub.id for sub in ast.walk(node)
             if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Load) and sub.id not in local]
    return list(dict.fromkeys(loads))
