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
    read_names: tuple[str, ...] = ()  # read before the cell binds them (from earlier cells), in order
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

    >>> analyze("C = 0.1\nacc = model.score(X, y)").literal_bindings
    {'C': 0.1}
    """
    try:
        # As IPython compiles cells: top-level await is allowed.
        tree = compile(source, "<cell>", "exec",
                       flags=ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
    except SyntaxError as error:
        return CellSyntax(parsed=False, error=error)
    except (ValueError, RecursionError):  # null bytes; nesting deeper than the parser goes
        return CellSyntax(parsed=False)
    visitor = _BindingVisitor()
    for statement in tree.body:
        visitor.statement(statement)
    reads = _flow(tree.body).reads
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


def _uses_mlflow(tree: ast.Module) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id == "mlflow":
            return True
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "mlflow" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "mlflow":
            return True
    return False


# -- the names a cell defines and reads at notebook level (hidden state, reproduce --minimal,
#    params read from earlier cells, upstream params) --

@dataclass(frozen=True)
class Names:
    """What a cell does with names at notebook level."""

    defines: frozenset[str]  # names it binds, imports, or changes (``clf.fit(...)``, ``df[c] = v``)
    reads: tuple[str, ...]  # names it uses before binding them itself, in order


def _parse(code: str) -> list[ast.stmt] | None:
    try:
        return ast.parse(code).body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


# Each tracked cell looks at the whole history: parse each distinct source once per kernel.
@functools.lru_cache(maxsize=4096)
def names(code: str) -> Names:
    r"""The names a cell defines and reads at notebook level.

    >>> n = names("import numpy as np\nx = np.ones(3) * scale\nclf.fit(x)")
    >>> sorted(n.defines), n.reads
    (['clf', 'np', 'x'], ('scale', 'clf'))
    """
    body = _parse(code)
    return Names(frozenset(), ()) if body is None else _flow(body).names


@functools.lru_cache(maxsize=4096)
def statement_names(code: str) -> tuple[Names, ...]:
    r"""What each top-level statement of a cell defines and reads, in order; ``()`` when the
    code does not parse. A statement's reads leave out only what it binds itself first.

    >>> [sorted(n.defines) for n in statement_names("a = f(seed)\nb = a + 1")]
    [['a'], ['b']]
    """
    body = _parse(code)
    return () if body is None else tuple(_flow([statement]).names for statement in body)


def _flow(statements: list[ast.stmt]) -> _Flow:
    flow = _Flow()
    flow.block(statements)
    flow.finish()
    return flow


class _Flow:
    """Walk code in the order it runs and note every name read before the code bound it.

    Branches count as taken (a name bound in an ``if`` is bound after it) and a loop body runs
    once. A comprehension's own names stay its own. Function and lambda bodies run when called,
    not where defined: their reads of names that are not their own are noted at the end, once
    the code has bound all it binds. A class body runs at once, but its names are not its
    methods'. Iterative rather than recursive: a long expression must not exhaust the stack.
    """

    def __init__(self, bound: set[str] | None = None,
                 later: list[tuple[set[str], list[ast.AST]]] | None = None) -> None:
        self.bound: set[str] = set() if bound is None else bound
        self.changed: set[str] = set()
        self._reads: dict[str, None] = {}
        self._later = [] if later is None else later  # function bodies: (their own names, body)

    @property
    def reads(self) -> tuple[str, ...]:
        return tuple(self._reads)

    @property
    def names(self) -> Names:
        return Names(frozenset(self.bound | self.changed), self.reads)

    def read(self, name: str) -> None:
        if name not in self.bound:
            self._reads.setdefault(name)

    def block(self, nodes: list[ast.AST]) -> None:
        stack: list[Any] = list(reversed(nodes))
        while stack:
            task = stack.pop()
            if callable(task):  # a step due after the nodes before it on the stack
                task()
            else:
                stack.extend(reversed(self._steps(task)))

    def finish(self) -> None:
        while self._later:
            own, body = self._later.pop(0)
            inner = _Flow(bound=set(own))
            inner.block(body)
            inner.finish()
            for name in inner.reads:
                if name not in inner.bound:  # bound anywhere in a function: its local
                    self.read(name)

    def _bind(self, *names: str) -> None:
        self.bound.update(names)

    def _steps(self, node: ast.AST) -> list[Any]:
        """Do what ``node`` does itself now; return what follows, in order (nodes, steps)."""
        if isinstance(node, ast.stmt):
            self.changed |= _changed(node)
        if isinstance(node, ast.Name):
            if isinstance(node.ctx, ast.Load):
                self.read(node.id)
            elif isinstance(node.ctx, ast.Store):
                self._bind(node.id)
            return []
        if isinstance(node, ast.Assign):
            return [node.value, *node.targets]
        if isinstance(node, ast.AugAssign):
            if isinstance(node.target, ast.Name):
                self.read(node.target.id)
            return [node.value, node.target]
        if isinstance(node, ast.AnnAssign):
            if node.value is None:  # ``x: int`` binds nothing
                return [node.annotation] + ([] if isinstance(node.target, ast.Name) else [node.target])
            return [node.value, node.annotation, node.target]
        if isinstance(node, ast.NamedExpr):
            return [node.value, node.target]
        if isinstance(node, (ast.For, ast.AsyncFor)):
            return [node.iter, node.target, *node.body, *node.orelse]
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            return self._comprehension(node)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return self._function(node)
        if isinstance(node, ast.ClassDef):
            return [*node.decorator_list, *node.bases, *node.keywords, lambda: self._class(node)]
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            self._bind(*(a.asname or a.name.split(".")[0] for a in node.names if a.name != "*"))
            return []
        if isinstance(node, ast.ExceptHandler):
            bind = [lambda: self._bind(node.name)] if node.name else []
            return [*([node.type] if node.type else []), *bind, *node.body]
        if isinstance(node, (ast.MatchAs, ast.MatchStar, ast.MatchMapping)):
            name = node.rest if isinstance(node, ast.MatchMapping) else node.name
            bind = [lambda: self._bind(name)] if name else []
            return [*ast.iter_child_nodes(node), *bind]
        return list(ast.iter_child_nodes(node))

    def _comprehension(self, node: ast.expr) -> list[Any]:
        before = set(self.bound)
        own = {n.id for g in node.generators for n in ast.walk(g.target) if isinstance(n, ast.Name)}

        def leave() -> None:  # its targets are its own; a walrus in it binds outside it
            self.bound = before | (self.bound - own)

        steps: list[Any] = [part for g in node.generators for part in (g.iter, g.target, *g.ifs)]
        results = [node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]
        return [*steps, *results, leave]

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> list[Any]:
        a = node.args
        own = {arg.arg for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]
               if arg is not None}
        body = [node.body] if isinstance(node, ast.Lambda) else node.body
        self._later.append((own, body))
        if isinstance(node, ast.Lambda):
            return [a]
        return [*node.decorator_list, a, *([node.returns] if node.returns else []),
                lambda: self._bind(node.name)]

    def _class(self, node: ast.ClassDef) -> None:
        inner = _Flow(bound=set(self.bound), later=self._later)
        inner.block(node.body)
        for name in inner.reads:
            self.read(name)
        self._bind(node.name)


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
