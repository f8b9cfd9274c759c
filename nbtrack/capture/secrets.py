"""Secrets never reach the store: names that mark them are not logged, and their values are
redacted from every text nbtrack logs (source, history, notebook snapshot, params, tracebacks).
"""

from __future__ import annotations

import ast
import functools
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

REDACTED = "***REDACTED***"
# Values shorter than this are not redacted from text: "abc" would mangle unrelated code.
MIN_SECRET_LENGTH = 4

_SECRET_NAME = re.compile(
    r"passw(or)?d|passwd|passphrase|(^|_)pass($|_)|(^|_)pwd($|_)"
    r"|(^|_)(auth_|access_|refresh_|bearer_|id_)?token($|_)|secret|api_?key|apikey"
    r"|credential|private_?key|access_?key|(^|_)auth($|_)"
)
# The shell's working folders: "pwd" marks a password in code, not in the environment.
SHELL_NOT_SECRET = frozenset({"PWD", "OLDPWD"})
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
# scheme://user:PASSWORD@host
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][\w+.-]*://[^\s:/@'\"]+:)(?P<pw>[^\s@/'\"]+)(?=@)")


def is_secret_name(name: str) -> bool:
    """True for names such as ``password``, ``db_pwd``, ``apiKey``, ``HF_TOKEN``, ``client_secret``.

    >>> is_secret_name("apiKey"), is_secret_name("max_tokens")
    (True, False)
    """
    words = _CAMEL.sub("_", str(name)).lower()
    return any(_SECRET_NAME.search(part) for part in re.split(r"[.\-\s/]", words))


class Redactor:
    """Collects secret values and removes them from text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = {s for s in secrets if len(s) >= MIN_SECRET_LENGTH}
        self._pattern: re.Pattern[str] | None = None

    def add(self, value: str) -> None:
        """Remember one secret value."""
        if isinstance(value, str) and len(value) >= MIN_SECRET_LENGTH and value not in self._secrets:
            self._secrets.add(value)
            self._pattern = None

    def add_from_environment(self, environ: Mapping[str, str] = os.environ) -> None:
        """Remember the values of environment variables whose names mark secrets."""
        for secret in _environment_secrets(tuple(environ.items())):
            self.add(secret)

    def add_from_namespace(self, namespace: Mapping[str, Any]) -> None:
        """Remember secret-named strings in a namespace, and secret-named keys inside its dicts."""
        for name, value in list(namespace.items()):
            if name.startswith("_"):
                continue
            if isinstance(value, str):
                if is_secret_name(name):
                    self.add(value)
                self._add_url_passwords(value)
            elif isinstance(value, dict):
                self._add_from_dict(value, depth=0)

    def _add_from_dict(self, mapping: dict, depth: int) -> None:
        if depth > 4:
            return
        for key, value in list(mapping.items())[:1000]:
            if isinstance(value, str):
                if is_secret_name(str(key)):
                    self.add(value)
                self._add_url_passwords(value)
            elif isinstance(value, dict):
                self._add_from_dict(value, depth + 1)

    def _add_url_passwords(self, text: str) -> None:
        if "://" in text:
            for match in _URL_PASSWORD.finditer(text):
                self.add(match.group("pw"))

    def add_from_source(self, source: str) -> None:
        """Remember string literals the source assigns to secret names, as keys or keywords."""
        for secret in secrets_in_source(source):
            self.add(secret)

    def key(self) -> frozenset[str]:
        """What this redactor hides: two redactors with equal keys redact alike."""
        return frozenset(self._secrets)

    def redact_cached(self, text: str) -> str:
        """:meth:`redact`, remembered: each tracked cell redacts the kernel's whole history,
        which is the same texts cell after cell.
        """
        return _redact_cached(self.key(), text)

    def redact(self, text: str) -> str:
        """Return text with every known secret and every URL password replaced."""
        if self._secrets:
            if self._pattern is None:
                ordered = sorted(self._secrets, key=len, reverse=True)
                self._pattern = re.compile("|".join(re.escape(s) for s in ordered))
            text = self._pattern.sub(REDACTED, text)
        return _URL_PASSWORD.sub(lambda m: m.group("head") + REDACTED, text)


# Every tracked cell reads the environment for secrets, and it seldom changes between cells.
@functools.lru_cache(maxsize=2)
def _environment_secrets(items: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    found: list[str] = []
    for name, value in items:
        if is_secret_name(name) and name not in SHELL_NOT_SECRET:
            found.append(value)
        found += [match.group("pw") for match in _URL_PASSWORD.finditer(value)]
    return tuple(found)


@functools.lru_cache(maxsize=4096)
def _redact_cached(secrets: frozenset[str], text: str) -> str:
    return Redactor(secrets).redact(text)


# Each tracked cell reads the kernel's whole history for secrets: parse each source once.
@functools.lru_cache(maxsize=4096)
def secrets_in_source(source: str) -> tuple[str, ...]:
    """String literals ``source`` assigns to secret names (as keys or keywords too), and
    passwords inside URLs it holds.
    """
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return ()
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and _is_str(node.value):
            found += [node.value.value for target in node.targets if _target_is_secret(target)]
        elif isinstance(node, ast.AnnAssign) and node.value is not None and _is_str(node.value):
            if _target_is_secret(node.target):
                found.append(node.value.value)
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=False):
                if _is_str(key) and is_secret_name(key.value) and _is_str(value):
                    found.append(value.value)
        elif isinstance(node, ast.keyword) and node.arg and is_secret_name(node.arg):
            if _is_str(node.value):
                found.append(node.value.value)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "://" in node.value:
            found += [match.group("pw") for match in _URL_PASSWORD.finditer(node.value)]
    return tuple(found)


def _is_str(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def _target_is_secret(target: ast.AST) -> bool:
    if isinstance(target, ast.Name):
        return is_secret_name(target.id)
    if isinstance(target, ast.Attribute):
        return is_secret_name(target.attr)
    if isinstance(target, ast.Subscript) and _is_str(target.slice):
        return is_secret_name(target.slice.value)
    return False
