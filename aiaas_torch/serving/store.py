"""The checked model store: which archives a start loads, and each one verified before TorchServe can read it.

Archives are checked here, by the installed package (`archive.verify_archive`: every member against the card, and
the card's signature when $AIAAS_SIGNING_KEY is set); TorchServe then loads the checked copies in HOME/store. The
signing key never reaches TorchServe or its workers, which run archive code.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import Mapping, Sequence

from .. import archive
from ..atomic import private_dir
from ..card import is_generation, is_text
from ..handlers.aiaas_contract import some_of
from ..handlers.integrity import file_name_problem
from .errors import ServerArgumentError
from .home import CHECKED_STORE


def archives_to_load(store: Path, model_args: Sequence[str]) -> tuple[list[str], dict[str, Path]]:
    """Return (the --models arguments for TorchServe, {file name in HOME/store: the archive checked into it}).

    An argument names a .mar in the store ("NAME=x.mar") or a path to one ("NAME=dir/x.mar", anything with a
    "/"): either way it is checked and copied into HOME/store, and TorchServe is given its file name there.
    "all" loads every .mar in the store. Raises ServerArgumentError for a URL, an archive not in the store (the
    message lists the ones that are; else TorchServe waits out ready_timeout for a model that cannot appear), a
    path that is not a file, two archives with the same file name, a NAME that is not a model name (archive.NAME_RE),
    a ',' in an archive or an '=' in its file name (TorchServe splits its model list at both), and, with "all", an
    entry TorchServe would load that is not a .mar file (a folder, .model or .tar.gz).
    """
    if list(model_args) == ["all"]:
        _require_store(store)
        sources: dict[str, Path] = {}
        for entry in sorted(store.iterdir()):
            if entry.name.startswith("."):  # TorchServe skips hidden entries; `package` stages in hidden folders
                continue
            if entry.name.endswith(".mar") and entry.is_file():
                sources[entry.name] = entry
            elif entry.is_dir() or entry.name.endswith((".model", ".tar.gz")):
                raise ServerArgumentError(
                    f"{entry}: TorchServe would load this as a model, but only .mar archives can be checked; "
                    "move it out of the model store"
                )
        return ["all"], sources
    args, sources = [], {}
    for arg in model_args:
        name, sep, file = arg.partition("=")
        name, file = (name, file) if sep else ("", name)
        if sep and not archive.NAME_RE.match(name):
            raise ServerArgumentError(f"model name {name!r} (in {arg!r}): must start with a letter or digit and hold only "
                                      "letters, digits and '_' (TorchServe splits its model list at ',' and '=')")  # fmt: skip
        if "," in file:
            raise ServerArgumentError(f"model archive {file!r}: a ',' would split TorchServe's model list; rename the file")
        if "://" in file:
            raise ServerArgumentError(f"model archive {file!r}: a URL cannot be checked; name a .mar in the model store or a path to one")
        if "/" in file or os.sep in file:
            source = Path(file).expanduser().absolute()
            if not source.is_file():
                raise ServerArgumentError(f"model archive {file!r}: no such file")
        else:
            _require_store(store)
            source = store / file
            if file_name_problem(file) or not source.is_file():
                held = sorted(p.name for p in store.glob("*.mar") if p.is_file() and not p.name.startswith("."))
                raise ServerArgumentError(
                    f"model archive {file!r} not found in the model store {store}; "
                    + (f"it holds {some_of(held, 10)}" if held else "it holds no .mar archives")
                    + " (or give a path to an archive, e.g. ./" + file + ")"
                )
        if file_name_problem(source.name):
            raise ServerArgumentError(f"model archive {file!r}: file name {file_name_problem(source.name)}")
        if "=" in source.name:
            raise ServerArgumentError(f"model archive {file!r}: an '=' in the file name would be read as NAME=FILE; rename the file")
        if sources.setdefault(source.name, source) != source:
            raise ServerArgumentError(f"two archives named {source.name!r}: {sources[source.name]} and {source}; rename one")
        args.append(f"{name}={source.name}" if name else source.name)
    return args, sources


def _require_store(store: Path) -> None:
    """Raise ServerArgumentError when the model store is not a directory."""
    if not store.is_dir():
        raise ServerArgumentError(f"model store not found: {store}")


def checked_store(home: Path, archives: Mapping[str, Path], key: str | None = None) -> Path:
    """Return HOME/store (mode 0700), rebuilt to hold a checked copy of each archive ({file name: source}).

    TorchServe loads these copies, never the store itself: a store others can write to could have a file
    swapped between our check and TorchServe's read. archive.verify_archive writes each copy from the very bytes
    it checked, with signatures checked under `key` ($AIAAS_SIGNING_KEY at start). A readable archive with no card (not
built by aiaas) is refused, key or not: nothing in it could be checked.
    Raises ServerArgumentError naming the archive and the member at fault.
    """
    checked = home / CHECKED_STORE
    if checked.is_symlink() or checked.is_file():
        checked.unlink()
    elif checked.exists():
        shutil.rmtree(checked)
    private_dir(checked)
    try:
        for file, source in archives.items():
            try:
                archive.verify_archive(source, key, copy_to=checked / file)
            except archive.ForeignArchiveError as e:  # nothing in it can be checked: no list of members and hashes
                raise ServerArgumentError(f"refusing to start: {e}; only archives built by `aiaas package` load") from None
            except archive.ArchiveError as e:
                raise ServerArgumentError(f"refusing to start: {e}") from None
    except BaseException:
        shutil.rmtree(checked, ignore_errors=True)  # a refused start leaves no copies behind
        raise
    return checked


def add_openai_base_urls(models: dict, info) -> None:
    """Add `openai_base_url` (the `openai` SDK's base_url: /predictions/NAME/VERSION/v1) to every served version of an
    embedding text model or a generation model, whose card is read from its checked copy in HOME/store; returns None."""
    store = Path(info.home) / CHECKED_STORE
    for name, versions in models.items():
        for v in versions:
            mar = store / str(v.get("modelUrl") or "")
            if not v.get("modelUrl") or "/" in str(v["modelUrl"]) or not mar.is_file():
                continue
            try:
                with zipfile.ZipFile(mar) as zf:
                    card = json.loads(zf.read("model.json"))
            except (OSError, KeyError, ValueError, zipfile.BadZipFile):
                continue
            embedding = isinstance(card, dict) and is_text(card) and card.get("output", {}).get("task") == "embedding"
            if embedding or (isinstance(card, dict) and is_generation(card)):
                v["openai_base_url"] = f"{info.inference_url}/predictions/{name}/{v.get('version')}/v1"
