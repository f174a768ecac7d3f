"""The `aiaas` command line: help texts, exit codes, one-line errors, nothing written on bad input, --json."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from aiaas_torch.cli import build_parser, main

COMMANDS = [["train"], ["quantize"], ["package"], ["serve"], ["serve", "start"], ["serve", "stop"], ["serve", "status"], ["serve", "token"],
            ["predict"], ["demo"]]


def _csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def linear_csv(tmp_path_factory) -> Path:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 3))
    y = X @ np.array([1.5, -2.0, 0.5]) + 3 + rng.normal(0, 0.01, 300)
    p = tmp_path_factory.mktemp("csv") / "lin.csv"
    lines = ["a,b,c,target"] + [",".join(f"{v:.6f}" for v in (*x, t)) for x, t in zip(X, y)]
    p.write_text("\n".join(lines) + "\n")
    return p


@pytest.fixture(scope="module")
def run_dir(linear_csv, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "lin"
    code = main(["train", str(linear_csv), "--target", "target", "--out", str(out), "--epochs", "200", "--lr", "0.1", "--no-compile", "--no-progress"])
    assert code == 0
    return out


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c))
def test_every_command_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([*cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: aiaas" in out and len(out.splitlines()) >= 3


@pytest.mark.parametrize(
    "content, needle",
    [
        (None, "file not found"),
        ("", "empty file"),
        ("a,b\n1,2\n3,4\n", "target column 'y' not found"),
        ("a,y\n1,2\nzz,4\n", "line 3, column 'a': non-numeric value 'zz'"),
        ("a,y\n1,2\nnan,4\n", "line 3, column 'a'"),
        ("a,y\n1,2\n3\n", "line 3: 1 fields, expected 2"),
        ("a,y\n1,2\n", "at least 2"),
        ("a,a,y\n1,2,3\n4,5,6\n", "duplicate column name 'a'"),
    ],
)
def test_train_bad_csv_exits_2_with_one_line_and_writes_nothing(tmp_path, content, needle):
    data = tmp_path / "d.csv"
    if content is not None:
        data.write_text(content)
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "aiaas_torch.cli", "train", str(data), "--target", "y", "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr, r.stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == (["d.csv"] if content is not None else [])


@pytest.mark.parametrize("args, needle", [
    (["--lr", "abc"], "--lr"), (["--epochs", "0"], "epochs"), (["--model", "tree"], "--model"), (["--hidden", "a,b"], "--hidden"),
    (["--val-fraction", "1.5"], "val_fraction"), (["--quantize", "int4"], "--quantize"), (["--compile", "sometimes"], "--compile"),
])
def test_train_bad_arguments_exit_2(linear_csv, tmp_path, capsys, args, needle):
    code = None
    try:
        code = main(["train", str(linear_csv), "--target", "target", "--out", str(tmp_path / "r"), "--no-compile", *args])
    except SystemExit as e:
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_train_writes_a_run_directory_and_prints_a_summary(run_dir, capsys):
    assert {p.name for p in run_dir.iterdir()} >= {"model.json", "model_float.pt2", "checkpoint.pt"}
    card = json.loads((run_dir / "model.json").read_text())
    coef = card["model"]["coefficients"]
    assert abs(coef["weights"]["a"] - 1.5) < 0.05 and abs(coef["bias"] - 3) < 0.05
    assert card["metrics"]["validation"]["r2"] > 0.99


def test_train_prints_the_program_choice_and_the_cost_of_a_forced_scheme(linear_csv, tmp_path, capsys):
    argv = ["train", str(linear_csv), "--target", "target", "--out", str(tmp_path / "r"), "--epochs", "5", "--no-progress"]
    assert main([*argv, "--compile", "never"]) == 0
    out = capsys.readouterr().out
    assert "float-compiled: dropped — compile never" in out and "serves: any rows → float-eager" in out
    assert main([*argv, "--quantize", "int8", "--min-weights", "0", "--no-compile"]) == 0
    err = capsys.readouterr().err
    assert "--quantize int8 needs a compiled package (compile never): the float program serves" in err


def test_train_json_prints_one_document(linear_csv, tmp_path, capsys):
    assert main(["train", str(linear_csv), "--target", "target", "--out", str(tmp_path / "r"), "--epochs", "5", "--no-compile", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema_version"] == 1 and 1 <= doc["training"]["epochs_run"] <= 5  # --epochs is a ceiling (the solver stops on convergence)


def test_constant_feature_is_a_warning_not_an_error(tmp_path, capsys):
    data = _csv(tmp_path / "c.csv", "a,k,y\n" + "".join(f"{i},7,{2 * i}\n" for i in range(1, 30)))
    assert main(["train", str(data), "--target", "y", "--out", str(tmp_path / "r"), "--epochs", "50", "--no-compile"]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "constant feature" in err and "'k'" in err


def test_predict_local_matches_python_api(run_dir, capsys):
    from aiaas_torch.runs import load_run

    assert main(["predict", "--local", str(run_dir), "--body", '{"instances": [[1, 2, 3]]}', "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["predictions"] == load_run(run_dir).predict({"instances": [[1, 2, 3]]})["predictions"]
    assert main(["predict", "--local", str(run_dir), "1,2,3", "0,0,0"]) == 0
    lines = capsys.readouterr().out.split()
    assert len(lines) == 2 and abs(float(lines[1]) - 3.0) < 0.1


@pytest.mark.parametrize("args, needle", [
    (["--body", "[1, 2]"], "2 values, expected 3"),
    (["--body", "{nope"], "not valid JSON"),
    (["1,x,3"], "instances[0] feature"),  # a text cell is sent as text (issue 25): the contract names the feature
    (["1,nan,3"], "row '1,nan,3': cell 'nan': values must be finite numbers"),
    ([], "exactly one"),
])
def test_predict_local_bad_input_exits_2(run_dir, capsys, args, needle):
    assert main(["predict", "--local", str(run_dir), *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1


def test_quantize_reexports_with_another_scheme(run_dir, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    assert main(["quantize", str(copy), "--quantize", "pow2", "--no-compile", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["scheme"] == "pow2" and report["layers"][0]["decision"] == "pow2"
    assert json.loads((copy / "model.json").read_text())["quantization"]["scheme"] == "pow2"


def test_package_is_reproducible_and_verified(run_dir, tmp_path, capsys):
    store1, store2 = tmp_path / "s1", tmp_path / "s2"
    assert main(["package", str(run_dir), "--name", "lin", "--version", "2", "--model-store", str(store1), "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(["package", str(run_dir), "--name", "lin", "--version", "2", "--model-store", str(store2), "--json"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert Path(first["path"]).name == "lin-2.mar" and first["sha256"] == second["sha256"]
    assert (store1 / "lin-2.mar").read_bytes() == (store2 / "lin-2.mar").read_bytes()
    with zipfile.ZipFile(store1 / "lin-2.mar") as zf:
        names = set(zf.namelist())
    assert {"tabular_handler.py", "aiaas_contract.py", "programs.py", "pt2_check.py", "batch_checks.py", "contract_common.py", "tensor_contract.py", "model.json", "model-config.yaml", "MAR-INF/MANIFEST.json", "model_float.pt2"} <= names
    assert [p.name for p in store1.iterdir()] == ["lin-2.mar"]  # no staging left behind


@pytest.mark.parametrize("args, needle", [
    (["--name", "bad name"], "name"), (["--name", "ok", "--version", "1/2"], "version"), (["--name", "ok", "--workers", "0"], "workers"),
])
def test_package_bad_arguments_exit_2(run_dir, tmp_path, capsys, args, needle):
    assert main(["package", str(run_dir), "--model-store", str(tmp_path / "s"), *args]) == 2
    assert needle in capsys.readouterr().err
    assert not any((tmp_path / "s").glob("*.mar"))


def test_package_refuses_a_run_directory_with_an_edited_file(run_dir, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    with open(copy / "model_float.pt2", "ab") as f:
        f.write(b"x")
    assert main(["package", str(copy), "--name", "lin", "--model-store", str(tmp_path / "s")]) == 2
    assert "model_float.pt2" in capsys.readouterr().err


def test_predict_without_server_exits_2(tmp_path, capsys):
    assert main(["predict", "y2x", "6", "--home", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert f"no TorchServe running from {tmp_path / 'none'} (--home)" in err
    assert f"`aiaas serve start --home {tmp_path / 'none'}`" in err and "AIAAS_HOME=DIR" in err


# --------------------------------------------------------------------------------------------- the CLI as people type it


def test_options_may_come_between_the_rows_and_negative_rows_are_rows(run_dir, capsys):
    from aiaas_torch.runs import load_run

    want = load_run(run_dir).predict({"instances": [[1, 2, 3], [-1.5, 2, 0], [-1, -2, -3]]})["predictions"]
    assert main(["predict", "--local", str(run_dir), "1,2,3", "--json", "-1.5,2,0", "--request-timeout", "5", "-1,-2,-3"]) == 0
    assert json.loads(capsys.readouterr().out)["predictions"] == want
    assert main(["predict", "--local", str(run_dir), "--json", "--", "-1,-2,-3"]) == 0  # `--` still ends the options
    assert json.loads(capsys.readouterr().out)["predictions"] == want[2:]
    with pytest.raises(SystemExit) as e:  # an unknown option is still refused, not taken for a row
        main(["predict", "--local", str(run_dir), "1,2,3", "--jsn"])
    assert e.value.code == 2 and "unrecognized arguments: --jsn" in capsys.readouterr().err


def test_an_option_between_the_name_and_the_rows_reaches_the_command(tmp_path, capsys):
    assert main(["predict", "y2x", "--home", str(tmp_path / "h"), "14.23,1.71", "--json", "-2.5,3"]) == 2
    err = capsys.readouterr().err
    assert "unrecognized" not in err and f"no TorchServe running from {tmp_path / 'h'}" in err


def _no_aiaas_above(path: Path) -> None:
    """Skip when a directory above `path` holds a .aiaas, which the discovery would rightly find."""
    if any((p / ".aiaas").is_dir() for p in path.parents):
        pytest.skip(f"a .aiaas exists above {path}")


def test_the_server_home_is_the_nearest_aiaas_in_this_or_a_parent_directory(tmp_path, monkeypatch, capsys):
    _no_aiaas_above(tmp_path)
    monkeypatch.delenv("AIAAS_HOME", raising=False)
    (tmp_path / "proj" / ".aiaas").mkdir(parents=True)
    deep = tmp_path / "proj" / "src" / "deeper"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    assert main(["predict", "y2x", "6"]) == 2
    err = capsys.readouterr().err
    assert f"no TorchServe running from {tmp_path / 'proj' / '.aiaas'} (the nearest .aiaas from {deep})" in err
    assert main(["serve", "status"]) == 1
    assert f"no TorchServe running from {tmp_path / 'proj' / '.aiaas'}" in capsys.readouterr().out
    monkeypatch.setenv("AIAAS_HOME", str(tmp_path / "elsewhere"))  # the variable wins over the search
    assert main(["predict", "y2x", "6"]) == 2
    assert f"no TorchServe running from {tmp_path / 'elsewhere'} ($AIAAS_HOME)" in capsys.readouterr().err
    assert main(["predict", "y2x", "6", "--home", str(tmp_path / "given")]) == 2  # and --home over the variable
    assert f"{tmp_path / 'given'} (--home)" in capsys.readouterr().err


def test_no_server_found_says_where_it_looked_and_how_to_start_or_point_at_one(tmp_path, monkeypatch, capsys):
    _no_aiaas_above(tmp_path)
    monkeypatch.delenv("AIAAS_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    parents = len(tmp_path.parents)
    assert main(["predict", "y2x", "6"]) == 2
    err = capsys.readouterr().err
    assert f"no TorchServe found: no .aiaas directory in {tmp_path} and its {parents} parent directories up to /" in err
    assert "--home not given, $AIAAS_HOME not set" in err
    assert "start one with `aiaas serve start`, or point at a running one with --home DIR or AIAAS_HOME=DIR" in err
    assert main(["serve", "stop"]) == 0
    assert f"no TorchServe was running from no .aiaas directory in {tmp_path}" in capsys.readouterr().out
    assert not (tmp_path / ".aiaas").exists()  # looking creates nothing


def test_serve_token_without_a_server_exits_2_and_prints_nothing_on_stdout(tmp_path, capsys):
    assert main(["serve", "token", "--home", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and f"no TorchServe running from {tmp_path} (--home)" in err


def test_aiaas_alone_prints_the_help_and_exits_0():
    r = subprocess.run([sys.executable, "-m", "aiaas_torch.cli"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout.startswith("usage: aiaas") and "serve" in r.stdout and "predict" in r.stdout


def test_human_output_shows_seven_significant_digits_and_json_the_full_value(run_dir, capsys):
    from aiaas_torch.cli.predict import _human

    assert _human(185.69967651367188) == "185.6997" and _human([0.30000001192092896, 2.0, "setosa"]) == "[0.3, 2, setosa]"
    assert main(["predict", "--local", str(run_dir), "1.1,2.2,3.3", "--json"]) == 0
    full = json.loads(capsys.readouterr().out)["predictions"][0]
    assert len(repr(full).replace("-", "").replace(".", "").lstrip("0")) > 7  # a float32 answer as a double
    assert main(["predict", "--local", str(run_dir), "1.1,2.2,3.3"]) == 0
    shown = capsys.readouterr().out.strip()
    assert len(shown.replace("-", "").replace(".", "").lstrip("0")) <= 7 and float(shown) == pytest.approx(full, rel=1e-6)


def test_the_card_records_hidden_sizes_only_for_an_mlp(run_dir, tmp_path, linear_csv):
    assert "hidden" not in json.loads((run_dir / "model.json").read_text())["training"]["settings"]
    assert main(["train", str(linear_csv), "--target", "target", "--model", "mlp", "--hidden", "8,4", "--epochs", "2",
                 "--out", str(tmp_path / "mlp"), "--no-compile", "--quantize", "none", "--no-progress"]) == 0
    assert json.loads((tmp_path / "mlp" / "model.json").read_text())["training"]["settings"]["hidden"] == [8, 4]


def _archive_names(store: Path, names: list[str]) -> None:
    store.mkdir()
    for n in names:
        (store / n).write_bytes(b"never read: the name is refused first")


def test_serve_start_with_an_archive_not_in_the_store_lists_the_ones_that_are(tmp_path, capsys):
    _archive_names(tmp_path / "store", [f"m{i:02d}-1.0.mar" for i in range(12)])
    argv = ["serve", "start", "--home", str(tmp_path / "home"), "--model-store", str(tmp_path / "store"), "--free-ports"]
    assert main([*argv, "--models", "m=m-1.0.mar"]) == 2
    err = capsys.readouterr().err
    assert "'m-1.0.mar' not found in the model store" in err
    assert "it holds m00-1.0.mar, m01-1.0.mar" in err and "m09-1.0.mar … and 2 more" in err and "m10" not in err
    assert main([*argv, "--models", f"m={tmp_path / 'nowhere' / 'm-1.0.mar'}"]) == 2
    assert f"model archive '{tmp_path / 'nowhere' / 'm-1.0.mar'}': no such file" in capsys.readouterr().err
    assert not (tmp_path / "home").exists()


def test_a_port_clash_names_the_cli_flag_on_the_cli_and_the_argument_in_python(tmp_path, capsys):
    import socket

    from aiaas_torch import serving as server

    (tmp_path / "store").mkdir()
    holder = socket.socket()
    try:
        try:
            holder.bind(("127.0.0.1", server.DEFAULT_PORTS.inference))
            holder.listen()
        except OSError:
            pass  # something else holds it: the clash is there all the same
        assert main(["serve", "start", "--home", str(tmp_path / "h"), "--model-store", str(tmp_path / "store")]) == 1
        err = capsys.readouterr().err
        assert "already in use" in err and "start with --free-ports" in err and "free_ports=True" not in err
        with pytest.raises(server.TorchServeError, match=r"start with free_ports=True$"):
            server.start_server(tmp_path / "h2", tmp_path / "store")
    finally:
        holder.close()
        for home in ("h", "h2"):  # nothing should run, but never leave a server behind if the port came free
            server.stop_server(tmp_path / home)


def test_serve_status_without_server(tmp_path, capsys):
    assert main(["serve", "status", "--home", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["running"] is False


def test_a_bug_is_an_internal_error_not_a_usage_error(monkeypatch, tmp_path, capsys):
    """A plain ValueError from deep inside (as numpy raises on a bug of ours) is exit 1, not the user's fault."""
    import aiaas_torch.data

    def broken(*args, **kwargs):
        raise ValueError("operands could not be broadcast together with shapes (3,) (4,)")

    monkeypatch.setattr(aiaas_torch.data, "load_csv", broken)
    data = tmp_path / "d.csv"
    data.write_text("x,y\n1,2\n2,4\n")
    assert main(["train", str(data), "--target", "y", "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "internal error: ValueError: operands could not be broadcast" in err and "--debug" in err
    assert "Traceback" not in err
    assert main(["train", str(data), "--target", "y", "--out", str(tmp_path / "run"), "--debug"]) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err


@pytest.mark.parametrize("module, name", [("aiaas_torch.client", "ClientError"), ("aiaas_torch.serving", "TorchServeError")])
def test_an_http_or_torchserve_failure_is_exit_1_with_its_message_not_an_internal_error(monkeypatch, tmp_path, capsys,
                                                                                       module, name):
    import importlib

    import aiaas_torch.data

    error = getattr(importlib.import_module(module), name)

    def failing(*args, **kwargs):
        raise error("the server went away")

    monkeypatch.setattr(aiaas_torch.data, "load_csv", failing)
    data = _csv(tmp_path / "d.csv", "x,y\n1,2\n2,4\n")
    assert main(["train", str(data), "--target", "y", "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "aiaas train: the server went away" in err and "internal error" not in err


def test_predicting_a_file_locally_imports_neither_the_http_client_nor_the_serving_package(run_dir, tmp_path):
    """httpx and aiaas_torch.serving cost the local command a third of a second of imports it never uses."""
    src = _csv(tmp_path / "rows.csv", "a,b,c\n1,2,3\n")
    code = ("import sys\nfrom aiaas_torch.cli import main\n"
            f"rc = main(['predict', '--local', {str(run_dir)!r}, '--file', {str(src)!r}, '--out', {str(tmp_path / 'p.csv')!r}])\n"
            "print(rc, sorted(m for m in sys.modules if m.split('.')[0] == 'httpx' or m.startswith(('aiaas_torch.serving', 'aiaas_torch.client'))))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.split(None, 1) == ["0", "[]\n"], r.stdout + r.stderr
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 2  # the header and one prediction


def test_a_file_row_whose_output_overflows_is_exit_2_naming_its_line(run_dir, tmp_path, capsys):
    """Inputs within float32 whose prediction is not (y = 1.5a - 2b + 0.5c + 3): the answer refuses it, naming the row."""
    src = _csv(tmp_path / "rows.csv", "a,b,c\n1,2,3\n3e38,-3e38,3e38\n")
    assert main(["predict", "--local", str(run_dir), "--file", str(src), "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err
    assert f"{src}, line 3: the model's output overflows float32" in err and "internal error" not in err, err
    assert not (tmp_path / "p.csv").exists()


def test_input_errors_raised_on_purpose_are_exit_2(tmp_path, capsys):
    data = tmp_path / "d.csv"
    data.write_text("x,y\n1,2\n2,oops\n")
    assert main(["train", str(data), "--target", "y", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "line 3" in err and "internal error" not in err


@pytest.mark.parametrize("args", [["--oip-port", "8090"], ["--oip", "--oip-port", "70000"], ["--oip", "--oip-port", "0"]])
def test_serve_start_refuses_a_bad_gateway_port_before_starting_anything(tmp_path, capsys, args):
    assert main(["serve", "start", "--home", str(tmp_path / "home"), "--model-store", str(tmp_path), *args]) == 2
    assert "--oip-port" in (err := capsys.readouterr().err) and "expected a port 1-65535, with --oip" in err, err
    assert not (tmp_path / "home").exists()


@pytest.mark.parametrize("cmd", [["predict", "m", "--prompt", "hi"], ["chat", "m"]], ids=["predict", "chat"])
@pytest.mark.parametrize("value", ["0", "-3", "two"])
def test_max_tokens_must_be_a_whole_number_of_at_least_one(cmd, value, tmp_path, capsys):
    """Refused by the parser, before any server is looked for (none exists here)."""
    with pytest.raises(SystemExit) as e:
        main([*cmd, "--max-tokens", value, "--home", str(tmp_path / "nohome")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--max-tokens" in err and "whole number" in err and repr(value) in err
