"""Integrity of a model's files: SHA-256 against the card, safe member names, and the CPU flags a compiled program needs.

Torch-and-stdlib only: shipped inside every .mar beside the handler (which checks the model programs when a worker
loads) and used by the installed aiaas_torch (packaging, `serve start`'s archive check, LocalModel). Checking a
signature is not done here: the installed aiaas_torch does it before an archive is loaded, never code shipped in it.
"""

from __future__ import annotations

import hashlib
import os

REFUSAL_MARK = "aiaas: refusing to load model"  # the handler logs it; serving.readiness looks for it
MANIFEST = "MAR-INF/MANIFEST.json"  # the one archive member outside the archive's top level
ISA_CPU_FLAGS = {  # what /proc/cpuinfo must list for code inductor compiled for that vector ISA
    "avx512": ("avx512f", "avx512dq", "avx512vl", "avx512bw"),
    "avx2": ("avx2", "fma"),
    "asimd": ("asimd",),
    "none": (),
}


def sha256_file(path: str | os.PathLike) -> str:
    """Return the hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def path_problem(name) -> str | None:
    """Return why `name` is not a safe relative path inside an archive or run directory, or None when it is."""
    if not isinstance(name, str) or not name:
        return "is not a file name"
    if "\\" in name or "\0" in name:
        return "holds a backslash or NUL (not a plain POSIX path)"
    if name.startswith("/"):
        return "is an absolute path"
    if any(part in ("", ".", "..") for part in name.split("/")):
        return "holds an empty, '.' or '..' path part"
    return None


def file_name_problem(name) -> str | None:
    """Return why a file name listed in a model card is not a plain base name (the archive manifest excepted), or None."""
    problem = path_problem(name)
    if problem is None and "/" in name and name != MANIFEST:
        problem = "is not a plain file name (it names a directory)"
    return problem


def verify_files(card: dict, directory: str | os.PathLike, roles=None) -> list:
    """Return a list of problems (unsafe name, missing file, SHA-256 mismatch) for the card's files in `directory`."""
    problems = []
    for name, meta in card.get("files", {}).items():
        unsafe = file_name_problem(name)
        if unsafe:  # checked for every entry: a card naming ../x is refused whatever role it claims
            problems.append(f"{name!r}: file name {unsafe}")
            continue
        if not isinstance(meta, dict):
            problems.append(f"{name}: its card entry is not an object")
            continue
        if roles is not None and meta.get("role") not in roles:
            continue
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            problems.append(f"{name}: missing")
        elif sha256_file(path) != meta.get("sha256"):
            problems.append(f"{name}: SHA-256 does not match the model card (file changed after export)")
    return problems


def cpu_flags() -> set:
    """Return this host's CPU feature flags (empty where /proc/cpuinfo is absent)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def host_supports(isa: str, flags: set | None = None) -> bool:
    """Return True when this host's CPU has every flag that the compiled package's vector ISA (e.g. "avx512 avx512_vnni") needs."""
    if not isinstance(isa, str) or not isa:
        return False  # not recorded: do not risk an illegal instruction
    have = cpu_flags() if flags is None else flags
    need = [f for token in isa.split() for f in ISA_CPU_FLAGS.get(token, (token,))]
    return all(f in have for f in need)

