"""`aiaas chat NAME`: a terminal chat with a served generation model; each answer streams as it is generated."""

from __future__ import annotations

import sys

from .common import UsageError, add_home_option, positive_int, running_home


def add_parser(sub) -> None:
    """Add the chat sub-parser to `sub`; returns None."""
    ch = sub.add_parser("chat", help="chat with a served generation model in the terminal (answers stream)",
                        description="Type a message and press Enter; the answer streams back and the conversation is "
                                    "kept for the next turn. An empty line or end of input (Ctrl-D) ends the chat.")
    ch.add_argument("name", metavar="NAME", help="the served generation model")
    ch.add_argument("--system", default=None, metavar="TEXT", help="a system message to begin the conversation with")
    ch.add_argument("--max-tokens", type=positive_int, default=None, metavar="N",
                    help="the most tokens per answer (default: the model's)")
    ch.add_argument("--version", dest="model_version", default=None, metavar="V", help="model version (default: the default version)")
    add_home_option(ch)
    ch.set_defaults(run=run)


def run(a) -> int:
    """Read messages from stdin until an empty line or its end, printing each streamed answer; returns the exit code."""
    from .. import client as cl

    messages = [{"role": "system", "content": a.system}] if a.system else []
    prompt = "you> " if sys.stdin.isatty() else ""
    with cl.Client(home=running_home(a)) as c:
        while True:
            if prompt:
                print(prompt, end="", flush=True)
            line = sys.stdin.readline()
            if not line.strip():
                return 0
            messages.append({"role": "user", "content": line.rstrip("\n")})
            pieces = []
            try:
                for piece in c.chat_stream(a.name, messages, version=a.model_version, max_tokens=a.max_tokens):
                    pieces.append(piece)
                    print(piece, end="", flush=True)
            except (cl.BadRequest, cl.NotFound, cl.TokenError) as e:  # the message, the name, or the --home
                raise UsageError(str(e)) from None
            print()
            messages.append({"role": "assistant", "content": "".join(pieces)})
