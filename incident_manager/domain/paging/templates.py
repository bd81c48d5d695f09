"""Message templates: a channel's title and body written in Jinja2, rendered in a sandbox.

A template is written by whoever writes the paging file; the values it shows come from
alerts, which anyone able to send an alert controls. So:

- Rendering uses Jinja2's `ImmutableSandboxedEnvironment`: no attribute starting with `_`
  (`{{ incident.__class__ }}` is refused), no method that changes a value, and the context
  holds only strings, numbers, lists and mappings (see docs/PAGING.md, Templates).
- Values are data, never templates: an alert title holding `{{ ... }}` prints as written.
- Work is bounded: a source is at most `MAX_TEMPLATE_CHARS`; `range()` gives at most
  `MAX_RANGE` numbers; loops nest at most `MAX_LOOP_DEPTH` deep; macros, recursive loops and
  other files (`include`, `import`, `extends`) are refused when the file is checked; `*` and
  `%` on strings, and string methods that pad (`center`, `ljust`, `format`, …), cannot make
  a long string; the output stops growing once it passes the caller's limit and is cut there.
- Undefined names are errors (`StrictUndefined`), so a misspelt key shows up on the ledger
  instead of sending a message with a hole in it.

`template_problem` finds what is wrong with a source before it is used (the configuration
check and every reload call it); `render_template` renders one, raising `TemplateFailed`
(the sender then falls back to its default message).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateError, TemplateSyntaxError, nodes
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_TEMPLATE_CHARS = 4000
"""Characters of one template's source; a message template is a few lines."""
MAX_RANGE = 100
"""Numbers one `range()` may give."""
MAX_LOOP_DEPTH = 2
"""`for` loops inside `for` loops, at most."""
MAX_VALUE_CHARS = 10_000
"""Longest string `*` or `%` may build inside a template."""

_FORBIDDEN_NODES: Mapping[type[nodes.Node], str] = {
    nodes.Macro: "macros are",
    nodes.CallBlock: "call blocks are",
    nodes.Include: "include is",
    nodes.Import: "import is",
    nodes.FromImport: "import is",
    nodes.Extends: "extends is",
}
_PADDING_METHODS = frozenset(
    {"center", "ljust", "rjust", "zfill", "expandtabs", "format", "format_map"}
)
_PADDING_FILTERS = ("center", "indent", "wordwrap", "format")
_TEMPLATE_FILE = "<template>"


class TemplateFailed(Exception):
    """A template could not be used; the message says why, with the template's line."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(f"line {line}: {message}" if line is not None else message)
        self.line = line
        self.reason = message


def _safe_range(*args: int) -> range:
    numbers = range(*args)
    if len(numbers) > MAX_RANGE:
        raise SecurityError(f"range() gives at most {MAX_RANGE} numbers in a template")
    return numbers


def _too_long(value: object, times: object) -> bool:
    return (
        isinstance(value, str | list | tuple)
        and isinstance(times, int)
        and len(value) * times > MAX_VALUE_CHARS
    )


class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox, with the bounds described in the module's docstring."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def call_binop(self, context: Context, operator_name: str, left: Any, right: Any) -> Any:
        """`*` may not build a long string or list, `**` a huge number, `%` a padded one."""
        if operator_name == "*" and (_too_long(left, right) or _too_long(right, left)):
            raise SecurityError(f"a value longer than {MAX_VALUE_CHARS} characters")
        if operator_name == "**" and isinstance(right, int) and abs(right) > 64:
            raise SecurityError("exponents above 64 are refused in a template")
        if operator_name == "%" and isinstance(left, str):
            raise SecurityError("%-formatting is refused in a template; use ~ to join text")
        return super().call_binop(context, operator_name, left, right)

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        """No padding methods on strings, besides the sandbox's own refusals."""
        if isinstance(obj, str) and attr in _PADDING_METHODS:
            return False
        return super().is_safe_attribute(obj, attr, value)


def _environment() -> _Sandbox:
    env = _Sandbox(
        undefined=StrictUndefined,
        autoescape=False,  # each channel escapes the values it puts in the context
        keep_trailing_newline=False,
    )
    for name in _PADDING_FILTERS:
        env.filters.pop(name, None)
    env.globals = {"range": _safe_range, "dict": dict}
    return env


_ENV = _environment()


def _syntax(source: str) -> nodes.Template:
    try:
        return _ENV.parse(source, filename=_TEMPLATE_FILE)
    except TemplateSyntaxError as error:
        raise TemplateFailed(error.message or "syntax error", error.lineno) from None


def _refusals(tree: nodes.Template) -> Iterator[TemplateFailed]:
    def walk(node: nodes.Node, depth: int) -> Iterator[TemplateFailed]:
        for kind, what in _FORBIDDEN_NODES.items():
            if isinstance(node, kind):
                yield TemplateFailed(f"{what} not allowed in a message template", node.lineno)
                return
        if isinstance(node, nodes.For):
            if node.recursive:
                yield TemplateFailed("recursive loops are not allowed", node.lineno)
                return
            depth += 1
            if depth > MAX_LOOP_DEPTH:
                yield TemplateFailed(
                    f"loops nest at most {MAX_LOOP_DEPTH} deep in a message template",
                    node.lineno,
                )
                return
        for child in node.iter_child_nodes():
            yield from walk(child, depth)

    yield from walk(tree, 0)


def template_problem(source: str) -> TemplateFailed | None:
    """What makes `source` unusable (too long, a syntax error, a refused construct), with
    the template's own line; None if it can be rendered."""
    if len(source) > MAX_TEMPLATE_CHARS:
        return TemplateFailed(
            f"the template has {len(source)} characters; at most {MAX_TEMPLATE_CHARS}"
        )
    try:
        tree = _syntax(source)
    except TemplateFailed as error:
        return error
    return next(_refusals(tree), None)


@functools.lru_cache(maxsize=256)
def _compiled(source: str) -> Template:
    problem = template_problem(source)
    if problem is not None:
        raise problem
    return _ENV.from_string(source)


def _failing_line(traceback: TracebackType | None) -> int | None:
    # Jinja2 rewrites the traceback so that the template's frames carry its line numbers.
    line = None
    while traceback is not None:
        if traceback.tb_frame.f_code.co_filename == _TEMPLATE_FILE:
            line = traceback.tb_lineno
        traceback = traceback.tb_next
    return line


def render_template(source: str, context: Mapping[str, Any], limit: int) -> str:
    """The template rendered with `context`, cut to `limit` characters (the last one `…`
    when cut). Raises TemplateFailed for anything the template did wrong."""
    template = _compiled(source)
    pieces: list[str] = []
    size = 0
    try:
        for piece in template.generate(dict(context)):
            pieces.append(piece)
            size += len(piece)
            if size > limit:
                break  # the generator is closed: the rest is never rendered
    except SecurityError as error:
        raise TemplateFailed(
            f"refused by the sandbox: {error}", _failing_line(error.__traceback__)
        ) from None
    except TemplateError as error:
        raise TemplateFailed(str(error), _failing_line(error.__traceback__)) from None
    except (ArithmeticError, LookupError, TypeError, ValueError, RecursionError) as error:
        raise TemplateFailed(
            f"{type(error).__name__}: {error}", _failing_line(error.__traceback__)
        ) from None
    text = "".join(pieces).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"
