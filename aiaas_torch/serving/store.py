"""The checked model store: which archives a start loads, and each one verified before TorchServe can read it.

Archives are checked here, by the installed package (`archive.verify_archive`: every member against the card, and
the card's signature when $AIAAS_SIGNING_KEY is set); TorchServe then loads the checked copies in HOME/store. The
signing key never reaches TorchServe or its workers, which run archive code.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Sequence

from .. import archive
from ..handlers.integrity import file_name_problem
from .errors import ServerArgumentError
from .home import CHECKED_STORE


def archives_to_load(store: Path, model_args: Sequence[str]) -> list[str]:
    """Return the file names in the store of the archives that --models names ("all": every .mar in it).

    Raises ServerArgumentError for a URL or a path (only plain .mar names in the store can be checked), an
    archive not in the store (else TorchServe waits out ready_timeout for a model that cannot appear), and, with
    "all", an entry TorchServe would load that is not a .mar file (a folder, .model or .tar.gz).
    """
    files: list[str] = []
    if list(model_args) == ["all"]:
        for entry in sorted(store.iterdir()):
            if entry.name.startswith("."):  # TorchServe skips hidden entries; `package` stages in hidden folders
                continue
            if entry.name.endswith(".mar") and entry.is_file():
                files.append(entry.name)
            elif entry.is_dir() or entry.name.endswith((".model", ".tar.gz")):
                raise ServerArgumentError(
                    f"{entry}: TorchServe would load this as a model, but only .mar archives can be checked; "
                    "move it out of the model store"
                )
        return files
    for arg in model_args:
        file = arg.split("=", 1)[-1]
        if "://" in file or file_name_problem(file) or "/" in file:
            raise ServerArgumentError(f"model archive {file!r}: name a .mar file in the model store (not a path or URL)")
        if not (store / file).is_file():
            raise ServerArgumentError(f"model archive {file!r} not found in the model store {store}")
        if file not in files:
            files.append(file)
    return files


def checked_store(home: Path, store: Path, archives: Sequence[str]) -> Path:
    """Return HOME/store (mode 0700), rebuilt to hold a checked copy of each named archive of the store.

    TorchServe loads these copies, never the store itself: a store others can write to could have a file
    swapped between our check and TorchServe's read. archive.verify_archive writes each copy from the very bytes
    it checked. A readable archive with no card (not built by aiaas) is copied unchecked, unless a key is set.
    Raises ServerArgumentError naming the archive and the member at fault.
    """
    key = os.environ.get(archive.SIGNING_KEY_ENV) or None
    checked = home / CHECKED_STORE
    if checked.is_symlink() or checked.is_file():
        checked.unlink()
    elif checked.exists():
        shutil.rmtree(checked)
    checked.mkdir(mode=0o700)
    os.chmod(checked, 0o700)  # mkdir's mode is masked by the umask
    try:
        for file in archives:
            try:
                archive.verify_archive(store / file, key, copy_to=checked / file)
            except archive.ForeignArchiveError as e:
                if key:
                    raise ServerArgumentError(
                        f"refusing to start: {e}; with ${archive.SIGNING_KEY_ENV} set only signed aiaas archives load"
                    ) from None
                shutil.copyfile(store / file, checked / file)
            except archive.ArchiveError as e:
                raise ServerArgumentError(f"refusing to start: {e}") from None
    except BaseException:
        shutil.rmtree(checked, ignore_errors=True)  # a refused start leaves no copies behind
        raise
    return checked
