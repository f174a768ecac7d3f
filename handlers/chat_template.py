"""Chat templates (untrusted Jinja text from a model directory) compiled and rendered only in Jinja's immutable sandbox.

A chat template turns OpenAI-style messages into the prompt text a model was trained on. It comes with the model
files, so it is treated as hostile: it is compiled in ``jinja2.sandbox.ImmutableSandboxedEnvironment`` (no access
to ``__class__``/``__subclasses__``/``__globals__``, no mutation of what it is given, no imports or includes), and
every way to spend time or memory is bounded: one render runs at most `MAX_STEPS` loop iterations and range()
elements (each for-loop is rewritten to count its steps), ``*``, ``+``, ``%``, ``~``, every call and every filter
refuse numbers over `MAX_OUTPUT` (a width, a count) and strings or lists over `MAX_OUTPUT` elements, ``**`` takes
exponents up to 64, and the output is cut off at `MAX_OUTPUT` characters; each fails with `TemplateError`. The
environment mirrors the one Hugging Face templates are written for (``trim_blocks``, ``lstrip_blocks``, the
loop-control extension, ``{% generation %}`` blocks, ``raise_exception``, ``strftime_now`` and a ``tojson`` filter
that keeps non-ASCII text as it is), so the rendered text equals ``transformers``' ``apply_chat_template(...,
tokenize=False)``.
"""

from __future__ import annotations

import datetime
import functools
import json
import operator
import re
import threading

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

MAX_OUTPUT = 1 << 20  # characters a render may produce (1 MB of ASCII)
MAX_TEMPLATE = 1 << 20  # characters of template text
MAX_STEPS = 1_000_000  # loop iterations and range() elements of one render, together
MAX_MESSAGES = 10_000

__all__ = ["MAX_OUTPUT", "TemplateError", "compile_template", "render"]


class TemplateError(ValueError):
    """A chat template that cannot be compiled or rendered safely, with a plain message saying why."""


def _raise_exception(message):
    raise TemplateError(f"the chat template refused the messages: {str(message)[:300]}")


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.datetime.now().strftime(str(fmt)[:100])


def _sized(value) -> int:
    return len(value) if isinstance(value, (str, bytes, list, tuple, dict)) else 1


def _weight(value) -> int:
    """Return the elements a value holds, one level deep (a list of strings counts their characters)."""
    if isinstance(value, (list, tuple, dict)):
        return len(value) + sum(_sized(v) for v in (value.values() if isinstance(value, dict) else value))
    return _sized(value)


def _check_args(what: str, args, kwargs) -> None:
    """Raise TemplateError when a call gets a huge number (a width, a count) or a huge string or list."""
    for v in (*args, *kwargs.values()):
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_OUTPUT:
            raise TemplateError(f"the chat template passes {v} to {what}; refused (numbers up to {MAX_OUTPUT})")
        if _weight(v) > MAX_OUTPUT:
            raise TemplateError(f"the chat template passes {_weight(v)} elements to {what}; refused (at most {MAX_OUTPUT})")


def _check_result(what: str, value):
    if _sized(value) > MAX_OUTPUT:
        raise TemplateError(f"the chat template made {_sized(value)} elements with {what}; refused (at most {MAX_OUTPUT})")
    return value


class _Budget(threading.local):
    """The steps (loop iterations, range elements) left to the render running in this thread."""

    steps = MAX_STEPS


_BUDGET = _Budget()


def _spend(n: int) -> None:
    _BUDGET.steps -= n
    if _BUDGET.steps < 0:
        raise TemplateError(f"the chat template runs more than {MAX_STEPS} loop steps; refused")


def _bounded_range(*args):
    _check_args("range", args, {})
    r = range(*args)
    _spend(len(r))
    return r


def _bounded_loop(iterable):
    for item in iterable:
        _spend(1)
        yield item


def _bounded_concat(parts):
    parts = [str(p) for p in parts]
    _check_args("~", (parts,), {})
    return "".join(parts)


def _bounded_filter(name: str, f):
    @functools.wraps(f)  # keeps jinja's pass_context / pass_environment marks
    def bounded(*args, **kwargs):
        _check_args(f"the {name} filter", [a for a in args if not isinstance(a, (jinja2.runtime.Context, jinja2.Environment))],
                    kwargs)
        return _check_result(f"the {name} filter", f(*args, **kwargs))

    return bounded


class _GenerationTag(Extension):
    """`{% generation %}…{% endgeneration %}` (marks the assistant's text for training masks): renders its body."""

    tags = {"generation"}

    def parse(self, parser):
        """Return the tag's body as a plain scope."""
        lineno = next(parser.stream).lineno
        return nodes.Scope(parser.parse_statements(("name:endgeneration",), drop_needle=True), lineno=lineno)


class _Bounded(NodeTransformer):
    """Rewrites a parsed template: a for-loop iterates through `_bounded_loop`, `a ~ b` joins through `_bounded_concat`."""

    def visit_For(self, node):
        """Return the loop with its iterable counted step by step."""
        self.generic_visit(node)
        node.iter = nodes.Filter(node.iter, "aiaas_bounded_loop", [], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node):
        """Return the bounded join of the `~` operands."""
        self.generic_visit(node)
        return nodes.Filter(nodes.List(node.nodes, lineno=node.lineno), "aiaas_bounded_concat", [], [], None, None,
                            lineno=node.lineno)


class _Environment(ImmutableSandboxedEnvironment):
    """The immutable sandbox with every size bounded: operators, calls, filters, `~`, loops and range."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def _parse(self, source, name, filename):
        """Return the parsed template with each for-loop's iterable counted and each `~` bounded."""
        return _Bounded().visit(super()._parse(source, name, filename))

    def call_binop(self, context, operator_name, left, right):
        """Return `left op right`, refusing an exponent over 64 or a result over `MAX_OUTPUT` elements."""
        if operator_name == "**":
            if isinstance(right, (int, float)) and abs(right) > 64:
                raise TemplateError(f"the chat template raises a number to the power {right}; refused (at most 64)")
            return operator.pow(left, right)
        if operator_name == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (str, bytes, list, tuple)) and isinstance(times, int) and _sized(seq) * times > MAX_OUTPUT:
                    raise TemplateError(f"the chat template builds a sequence of {_sized(seq) * times} elements; "
                                        f"refused (at most {MAX_OUTPUT})")
            return operator.mul(left, right)
        if operator_name == "+":
            if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
                _check_args("+", ((left, right),), {})
            return _check_result("+", operator.add(left, right))
        if isinstance(left, str):  # "%" formatting: a width or precision is a number in the format text
            _check_args("%", (left, right), {})
            if re.search(r"[0-9]{7,}", left):
                raise TemplateError("the chat template formats with a width or precision over 6 digits; refused")
        return _check_result("%", operator.mod(left, right))

    def call(self, __context, __obj, *args, **kwargs):
        """Call `__obj` as the sandbox allows, refusing huge arguments and huge results."""
        what = getattr(__obj, "__name__", type(__obj).__name__)
        _check_args(what, args, kwargs)
        return _check_result(what, super().call(__context, __obj, *args, **kwargs))


def _environment() -> _Environment:
    env = _Environment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols", _GenerationTag],
                       loader=jinja2.FunctionLoader(lambda name: None))  # include/import/extends find nothing
    env.filters["tojson"] = _tojson
    env.filters = {name: _bounded_filter(name, f) for name, f in env.filters.items()}
    env.filters["aiaas_bounded_loop"] = _bounded_loop
    env.filters["aiaas_bounded_concat"] = _bounded_concat
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["range"] = _bounded_range
    return env


_ENV = _environment()


def compile_template(text: str) -> jinja2.Template:
    """Return the compiled template of `text` (sandboxed), or raise TemplateError saying why it does not compile."""
    if not isinstance(text, str) or not text.strip():
        raise TemplateError("the chat template must be non-empty text")
    if len(text) > MAX_TEMPLATE:
        raise TemplateError(f"the chat template has {len(text)} characters; at most {MAX_TEMPLATE} are read")
    try:
        return _ENV.from_string(text)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"the chat template is not valid Jinja (line {e.lineno}: {str(e.message)[:200]})") from None
    except (jinja2.TemplateError, RecursionError, MemoryError) as e:
        raise TemplateError(f"the chat template cannot be compiled ({type(e).__name__}: {str(e)[:200]})") from None


def _check_messages(messages) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise TemplateError("messages must be a non-empty list of {role, content} objects")
    if len(messages) > MAX_MESSAGES:
        raise TemplateError(f"{len(messages)} messages; at most {MAX_MESSAGES} are taken")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise TemplateError(f"messages[{i}] must be an object with a string 'role' and a string 'content'")
        extra = sorted(set(m) - {"role", "content", "name"})
        if extra:
            raise TemplateError(f"messages[{i}] has field(s) {', '.join(repr(k) for k in extra[:5])}; "
                                f"only role, content and name are taken")
    return [dict(m) for m in messages]


def render(template: jinja2.Template, messages: list[dict], *, add_generation_prompt: bool = True,
           bos_token: str = "", eos_token: str = "") -> str:
    """Return the prompt text of `messages` rendered by a compiled template; TemplateError when it fails or overflows."""
    messages = _check_messages(messages)
    out, size = [], 0
    _BUDGET.steps = MAX_STEPS
    try:
        for piece in template.generate(messages=messages, add_generation_prompt=bool(add_generation_prompt),
                                       bos_token=bos_token or "", eos_token=eos_token or ""):
            size += len(piece)
            if size > MAX_OUTPUT:
                raise TemplateError(f"the chat template's output passed {MAX_OUTPUT} characters; refused")
            out.append(piece)
    except TemplateError:
        raise
    except jinja2.TemplateNotFound as e:
        raise TemplateError(f"the chat template tries to load another template ({str(e)[:60]!r}); a chat template "
                            f"cannot include, import or extend others") from None
    except jinja2.exceptions.SecurityError as e:
        raise TemplateError(f"the chat template tried something the sandbox forbids ({str(e)[:200]})") from None
    except RecursionError:
        raise TemplateError("the chat template recursed too deeply") from None
    except MemoryError:
        raise TemplateError("the chat template ran out of memory") from None
    except Exception as e:  # any other failure of untrusted template code is the template's fault, named
        raise TemplateError(f"the chat template failed to render ({type(e).__name__}: {str(e)[:200]})") from None
    return "".join(out)
