"""Chat templates (untrusted Jinja text from a model directory) compiled and rendered only in Jinja's immutable sandbox.

A chat template turns OpenAI-style messages into the prompt text a model was trained on. It comes with the model
files, so it is treated as hostile: it is compiled in ``jinja2.sandbox.ImmutableSandboxedEnvironment`` (no access
to ``__class__``/``__subclasses__``/``__globals__``, no mutation of what it is given, no imports), its ``range``
and its ``*``/``**`` operators are bounded, and its output is cut off at `MAX_OUTPUT` characters, so a template
that loops to exhaust memory fails with `TemplateError` instead. The environment mirrors the one Hugging Face
templates are written for (``trim_blocks``, ``lstrip_blocks``, the loop-control extension, ``raise_exception``,
``strftime_now`` and a ``tojson`` filter that keeps non-ASCII text as it is), so the rendered text equals
``transformers``' ``apply_chat_template(..., tokenize=False)``.
"""

from __future__ import annotations

import datetime
import json
import operator

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_OUTPUT = 1 << 20  # characters a render may produce (1 MB of ASCII)
MAX_TEMPLATE = 1 << 20  # characters of template text
MAX_RANGE_TOTAL = 1_000_000  # elements every range() of one render may produce together
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
    return len(value) if isinstance(value, (str, bytes, list, tuple)) else 1


class _Environment(ImmutableSandboxedEnvironment):
    """The immutable sandbox with `*` and `**` bounded (a template may not build a huge string, list or number)."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context, operator_name, left, right):
        """Return `left op right`, refusing a result over `MAX_OUTPUT` elements or an exponent over 64."""
        if operator_name == "**":
            if isinstance(right, (int, float)) and abs(right) > 64:
                raise TemplateError(f"the chat template raises a number to the power {right}; refused (at most 64)")
            return operator.pow(left, right)
        for seq, times in ((left, right), (right, left)):
            if isinstance(seq, (str, bytes, list, tuple)) and isinstance(times, int) and _sized(seq) * times > MAX_OUTPUT:
                raise TemplateError(f"the chat template builds a sequence of {_sized(seq) * times} elements; "
                                    f"refused (at most {MAX_OUTPUT})")
        return operator.mul(left, right)


def _environment() -> _Environment:
    env = _Environment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"],
                       loader=jinja2.FunctionLoader(lambda name: None))  # include/import/extends find nothing
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
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


def _budgeted_range():
    left = [MAX_RANGE_TOTAL]

    def bounded_range(*args):
        r = range(*args)
        left[0] -= len(r)
        if left[0] < 0:
            raise TemplateError(f"the chat template's loops run over more than {MAX_RANGE_TOTAL} numbers; refused")
        return r

    return bounded_range


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
    try:
        for piece in template.generate(messages=messages, add_generation_prompt=bool(add_generation_prompt),
                                       bos_token=bos_token or "", eos_token=eos_token or "", range=_budgeted_range()):
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
