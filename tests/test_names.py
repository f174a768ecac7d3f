"""The names users type: one name per meaning, old spellings that still work and warn, defaults read from the
library's dataclasses and signatures, and a `--help` that explains every option."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import warnings

import httpx
import pytest

from aiaas_torch.cli import build_parser, main
from aiaas_torch.cli.common import resolve_defaults


def parse(argv: list[str]):
    """Return the arguments `aiaas ARGV` runs with (defaults read as a command reads them)."""
    return resolve_defaults(build_parser().parse_args(argv))


def field_default(cls, name: str):
    """Return a dataclass field's default, read with dataclasses.fields."""
    (f,) = [f for f in dataclasses.fields(cls) if f.name == name]
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def parameter_default(fn, name: str):
    """Return a function's (or class's) parameter default, read with inspect.signature."""
    return inspect.signature(fn).parameters[name].default


# ------------------------------------------------------------------------------------------- old spellings

RENAMED = [  # (argv with the old spelling, the same with the new one, the argument's name, its value)
    (["quantize", "run", "--scheme", "pow2"], ["quantize", "run", "--quantize", "pow2"], "scheme", "pow2"),
    (["serve", "start", "--timeout", "7"], ["serve", "start", "--ready-timeout", "7"], "ready_timeout", 7.0),
    (["deploy", "m", "m.mar", "--timeout", "7"], ["deploy", "m", "m.mar", "--ready-timeout", "7"], "ready_timeout", 7.0),
    (["predict", "m", "1", "--timeout", "7"], ["predict", "m", "1", "--request-timeout", "7"], "request_timeout", 7.0),
    (["bench", "--timeout", "7"], ["bench", "--request-timeout", "7"], "request_timeout", 7.0),
    (["bench", "--model", "m"], ["bench", "--name", "m"], "name", "m"),
]


@pytest.mark.parametrize("old, new, dest, value", RENAMED, ids=lambda x: " ".join(x) if isinstance(x, list) else None)
def test_an_old_option_spelling_still_works_and_prints_one_notice_naming_the_new_one(old, new, dest, value, capsys):
    assert getattr(parse(old), dest) == value
    (notice,) = capsys.readouterr().err.splitlines()
    old_flag = next(a for a in old if a.startswith("--"))
    new_flag = next(a for a in new if a.startswith("--"))
    assert notice == f"aiaas: deprecated: {old_flag} is now {new_flag} (the old spelling goes in the next release)"
    assert getattr(parse(new), dest) == value
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("old", ["--scheme", "--timeout", "--model"])
def test_old_spellings_are_hidden_from_the_help(old, capsys):
    for argv in (["quantize"], ["serve", "start"], ["deploy"], ["predict"], ["bench"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args([*argv, "--help"])
        assert re.search(rf"{old}\b(?!-)", capsys.readouterr().out) is None


def test_the_old_spelling_runs_the_command_end_to_end(capsys):
    """bench --model still reaches the command, which then looks for the server as with --name."""
    assert main(["bench", "--model", "m", "--home", "/nonexistent-home"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("aiaas: deprecated: --model is now --name") and "no TorchServe" in err[-1]


def test_one_name_per_meaning_across_the_commands():
    """A READY wait, a request's wait and the served name are spelled the same wherever they appear."""
    options = {}
    for argv in (["serve", "start"], ["deploy"], ["predict"], ["bench"], ["train"], ["quantize"], ["import"]):
        sub = build_parser()
        for word in argv:
            sub = next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction)).choices[word]
        options[" ".join(argv)] = {s for a in sub._actions if a.help != argparse.SUPPRESS for s in a.option_strings}
    assert {"--ready-timeout"} <= options["serve start"] & options["deploy"]
    assert {"--request-timeout"} <= options["predict"] & options["bench"]
    assert "--timeout" not in set().union(*options.values())
    assert {"--quantize"} <= options["train"] & options["quantize"] & options["import"]
    assert "--name" in options["bench"] and "--model" not in options["bench"]  # --model is train's model kind


def test_python_old_spellings_still_work_and_warn():
    from aiaas_torch import client as cl
    from aiaas_torch.bench import Target, measure, parse_config
    from aiaas_torch.deprecation import RenamedWarning
    from aiaas_torch.errors import InputError

    with pytest.warns(RenamedWarning, match=r"Client\(timeout=...\) is now Client\(request_timeout=...\)"):
        c = cl.Client(inference_url="http://127.0.0.1:1", timeout=2.0)
    assert c.timeout == httpx.Timeout(2.0, connect=2.0)
    c.close()
    with pytest.warns(RenamedWarning, match="HTTPStatusError is now aiaas_torch.client.StatusError"):
        from aiaas_torch.client import HTTPStatusError
    assert HTTPStatusError is cl.StatusError and "HTTPStatusError" not in cl.__all__
    with pytest.warns(RenamedWarning, match=r"measure\(timeout=...\) is now measure\(request_timeout=...\)"):
        with pytest.raises(InputError, match="loopback"):  # the old keyword is taken, then the target is checked
            measure(Target("http://example.com/p"), timeout=1.0)
    with pytest.raises(TypeError, match="'timeuot'"):
        measure(Target("http://127.0.0.1:1/p"), timeuot=1.0)
    with pytest.warns(RenamedWarning, match="--config key timeout is now response_timeout"):
        assert parse_config("a:timeout=7")[1].response_timeout_s == 7


def test_the_server_functions_have_one_name_in_the_package_and_at_the_top():
    """ai.start_server is serving.start_server (it was serving.start); the old short names still work and warn."""
    import aiaas_torch as ai
    from aiaas_torch import serving
    from aiaas_torch.deprecation import RenamedWarning

    for new in ("start_server", "stop_server", "server_status", "deploy", "rollback", "retire", "versions", "wait_until_ready"):
        assert getattr(ai, new) is getattr(serving, new), new
    for old, new in (("start", "start_server"), ("stop", "stop_server"), ("status", "server_status")):
        with pytest.warns(RenamedWarning, match=rf"aiaas_torch.serving.{old} is now aiaas_torch.serving.{new}"):
            assert getattr(serving, old) is getattr(serving, new)
        assert old not in serving.__all__
    for fn in (ai.start_server, ai.deploy):  # the READY wait is spelled the same in both
        assert "ready_timeout" in inspect.signature(fn).parameters and "timeout" not in inspect.signature(fn).parameters


def test_deploys_old_timeout_keyword_still_works_and_warns(tmp_path):
    from aiaas_torch import serving
    from aiaas_torch.deprecation import RenamedWarning

    with pytest.warns(RenamedWarning, match=r"deploy\(timeout=...\) is now deploy\(ready_timeout=...\)"):
        with pytest.raises(serving.TorchServeError):  # no server runs there: refused after the keyword was taken
            serving.deploy("m", tmp_path / "m.mar", home=tmp_path, timeout=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(serving.TorchServeError):
            serving.deploy("m", tmp_path / "m.mar", home=tmp_path, ready_timeout=5)


# ------------------------------------------------------------------------------------------- defaults


def _defaults_expected():
    """Return [(argv, argument name, the library's default read independently)]."""
    from aiaas_torch import client, demo, kserve, serving
    from aiaas_torch.archive import package
    from aiaas_torch.bench.loadgen import measure
    from aiaas_torch.bench.served import bench_run_dir
    from aiaas_torch.quantize import QuantConfig
    from aiaas_torch.select import SelectConfig
    from aiaas_torch.train import TrainConfig

    train = ["train", "d.csv", "--target", "y", "--out", "r"]
    rows = [(train, f, field_default(TrainConfig, f)) for f in
            ("hidden", "weight_decay", "seed", "val_fraction", "lr_schedule", "checkpoint_every", "device",
             "momentum", "tol", "batch_size", "patience")]
    rows += [(train, f, field_default(SelectConfig, f)) for f in
             ("cv", "budget", "time_limit", "metric", "max_latency_us", "max_bytes", "compile")]
    for argv in (train, ["quantize", "r"], ["import", "p.pt2", "--out", "r", "--calibration", "c.npz"]):
        rows += [(argv, "scheme", field_default(QuantConfig, "scheme")), (argv, "min_weights", field_default(QuantConfig, "min_weights"))]
    from aiaas_torch.data import load_csv

    rows.append((train, "max_categories", parameter_default(load_csv, "max_categories")))
    rows += [(["serve", "start"], "ready_timeout", parameter_default(serving.start_server, "ready_timeout")),
             (["serve", "start"], "model_store", parameter_default(serving.start_server, "model_store")),
             (["deploy", "m", "m.mar"], "ready_timeout", parameter_default(serving.deploy, "ready_timeout")),
             (["predict", "m", "1"], "request_timeout", parameter_default(client.Client, "request_timeout")),
             (["bench", "r"], "server_warmup", parameter_default(bench_run_dir, "server_warmup")),
             (["export-kserve", "m.mar", "--out", "o"], "image", parameter_default(kserve.export_kserve, "image"))]
    rows += [(["bench", "r"], f, parameter_default(measure, f))
             for f in ("concurrency", "duration", "warmup", "request_timeout", "max_requests", "processes")]
    rows += [(["package", "r", "--name", "m"], f, parameter_default(package, f)) for f in ("version", "model_store", "device")]
    rows += [(["demo"], f, parameter_default(demo.run_demo, f)) for f in ("home", "workdir", "model_store")]
    return rows


def test_every_cli_default_is_the_librarys_own():
    """Each default is read from the dataclass field or the function parameter it feeds, not copied beside it
    (`serve start` once waited 180 s for READY while `start()` waited 120 s)."""
    rows = _defaults_expected()
    wrong = [(" ".join(argv[:2]), name, getattr(parse(argv), name), want) for argv, name, want in rows
             if getattr(parse(argv), name) != want]
    assert wrong == [] and len(rows) > 40


def test_the_help_shows_the_librarys_defaults(capsys):
    from aiaas_torch.archive import ServingConfig
    from aiaas_torch.quantize import QuantConfig
    from aiaas_torch.select import SelectConfig
    from aiaas_torch.train import TrainConfig

    def help_of(*argv):
        with pytest.raises(SystemExit):
            build_parser().parse_args([*argv, "--help"])
        return " ".join(capsys.readouterr().out.split())

    train = help_of("train")
    assert f"most epochs (default {field_default(TrainConfig, 'epochs')};" in train
    assert f"the last halving rung's, default {field_default(SelectConfig, 'epochs')})" in train
    assert f"the top {field_default(SelectConfig, 'finalists')} are exported" in train
    assert f"above F (default {field_default(QuantConfig, 'gate_max_rel_rmse')})" in train
    assert f"below F (default {field_default(QuantConfig, 'gate_min_label_agreement')})" in train
    package = help_of("package")
    assert f"TorchServe workers for the model (default {field_default(ServingConfig, 'workers')})" in package
    assert f"TorchServe batchSize (default {field_default(ServingConfig, 'batch_size')};" in package
    assert f"(default {field_default(ServingConfig, 'response_timeout_s')})" in package


# ------------------------------------------------------------------------------------------- --help


def _commands(parser=None, prefix=()):
    """Return [(argv of a command, its parser)] for every command and sub-command of `aiaas`."""
    parser = parser or build_parser()
    found = [(list(prefix), parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for word, sub in action.choices.items():
                found += _commands(sub, (*prefix, word))
    return found


@pytest.mark.parametrize("argv, parser", _commands(), ids=lambda x: " ".join(x) if isinstance(x, list) else "")
def test_every_commands_help_exits_0_and_explains_every_option(argv, parser, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([*argv, "--help"])
    assert e.value.code == 0 and "usage: aiaas" in capsys.readouterr().out
    shown = [a for a in parser._actions if a.help != argparse.SUPPRESS and not isinstance(a, argparse._SubParsersAction)]
    assert [a.dest for a in shown if not (a.help or "").strip()] == []  # every option and positional has a help text
    takes_value = [a for a in shown if a.option_strings and a.nargs != 0 and a.dest != "help"]
    assert [a.option_strings[0] for a in takes_value if a.metavar is None and a.choices is None] == []  # say what to type
    if argv:
        assert parser.description, f"`aiaas {' '.join(argv)} --help` has no description"


# ------------------------------------------------------------------------------------------- the docs


def _documented_commands(text: str):
    """Yield every `aiaas ...` command a document shows: in backticks, or as a line of a code block."""
    yield from (m.group(1) for m in re.finditer(r"`(aiaas [^`]+)`", text))
    for line in text.splitlines():
        if line.strip().startswith("aiaas "):
            yield line.strip().split(" # ")[0].split("  #")[0]


def test_the_docs_type_no_old_spelling(capsys):
    """Every `aiaas` command in README.md, docs/, examples/ and deploy/ parses without a deprecation notice."""
    import shlex
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    files = sorted([root / "README.md", *root.glob("docs/*.md"), *root.glob("examples/*.md"), *root.glob("deploy/**/*.md")])
    old, seen = [], 0
    for f in files:
        for cmd in _documented_commands(f.read_text()):
            try:
                argv = shlex.split(cmd.replace("\\", ""))[1:]
            except ValueError:  # prose with an unbalanced quote: not a command line
                continue
            seen += 1
            try:
                build_parser().parse_args(argv)
            except SystemExit:  # placeholders (RUN_DIR, ...) may not parse; only a notice counts here
                pass
            if "deprecated" in capsys.readouterr().err:
                old.append(f"{f.relative_to(root)}: {cmd}")
    assert old == [] and seen > 20
