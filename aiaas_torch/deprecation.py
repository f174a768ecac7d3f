"""Old spellings of renamed Python names, kept for one release: they still work and warn, naming the new spelling.

The command line's old option spellings print their own one-line notice (cli/common.renamed); the Python API's
warn with RenamedWarning, a FutureWarning, which Python shows on stderr by default (a DeprecationWarning is hidden
outside __main__).
"""

from __future__ import annotations

import warnings


class RenamedWarning(FutureWarning):
    """An old spelling of a renamed name or keyword was used; the message names the new one."""


def warn_renamed(old: str, new: str, stacklevel: int = 3) -> None:
    """Warn (RenamedWarning) that `old` is now spelled `new`; returns None."""
    warnings.warn(f"{old} is now {new} (the old spelling goes in the next release)", RenamedWarning, stacklevel=stacklevel)


def renamed_keywords(where: str, given: dict, renames: dict[str, str]) -> dict:
    """Return {new keyword: value} for the old keyword spellings in `given`, warning about each (RenamedWarning).

    Raises TypeError, as Python does, for a keyword that is neither an old spelling nor accepted by `where`.
    """
    unknown = sorted(set(given) - set(renames))
    if unknown:
        raise TypeError(f"{where}() got an unexpected keyword argument {unknown[0]!r}")
    for old in given:
        warn_renamed(f"{where}({old}=...)", f"{where}({renames[old]}=...)", stacklevel=4)
    return {renames[old]: value for old, value in given.items()}
