"""Integrity of a model's files: SHA-256 against the card, safe member names, and this host's CPU facts: its flags, its
model name, the flags a compiled program's vector ISA needs and the ISA class a plan's timings were measured on (the
one reader of /proc/cpuinfo and the one table of ISA flags, for the handler, LocalModel, export and the benchmarks).

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
# vector ISA classes by what reduced-precision kernels can use, best first; a reduced-precision program's speed
# was measured on one class and does not carry over to another (int8 was 20× slower on avx2 than on avx512_vnni).
# Built on ISA_CPU_FLAGS, so a class and the compiled code of its ISA never disagree about which flags it needs.
ISA_CLASSES = (
    ("amx", ("amx_int8", "amx_tile")),
    ("avx512_vnni", (*ISA_CPU_FLAGS["avx512"], "avx512_vnni")),
    ("avx512", ISA_CPU_FLAGS["avx512"]),
    ("avx2", ISA_CPU_FLAGS["avx2"]),
    ("asimd", ISA_CPU_FLAGS["asimd"]),
)


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


def checked_card(model_dir: str, model_name: str, roles, log) -> dict:
    """Return the card (model.json) of a worker's model directory after checking the files of these roles against it;
    a damaged file is logged with REFUSAL_MARK (serving.readiness looks for it) and raised as RuntimeError."""
    import json

    with open(os.path.join(model_dir, "model.json"), encoding="utf-8") as f:
        card = json.load(f)
    problems = verify_files(card, model_dir, roles=roles)
    if problems:
        msg = f"{REFUSAL_MARK} {model_name}: " + "; ".join(problems)
        log(msg)
        raise RuntimeError(msg)
    return card


def _cpuinfo_field(keys: tuple) -> str | None:
    """Return the value of the first /proc/cpuinfo line starting with one of `keys`, or None (no such line or file)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(keys):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags() -> set:
    """Return this host's CPU feature flags (empty where /proc/cpuinfo is absent)."""
    return set((_cpuinfo_field(("flags", "Features")) or "").split())


def cpu_model_name() -> str:
    """Return this host's CPU model name from /proc/cpuinfo ("unknown" where absent)."""
    return _cpuinfo_field(("model name", "Model", "cpu model")) or "unknown"


def isa_class(flags: set) -> str:
    """Return the vector ISA class of a CPU with these flags ("amx", "avx512_vnni", "avx512", "avx2", "asimd", "none")."""
    return next((name for name, need in ISA_CLASSES if all(f in flags for f in need)), "none")


def host_supports(isa: str, flags: set | None = None) -> bool:
    """Return True when this host's CPU has every flag that the compiled package's vector ISA (e.g. "avx512 avx512_vnni") needs."""
    if not isinstance(isa, str) or not isa:
        return False  # not recorded: do not risk an illegal instruction
    have = cpu_flags() if flags is None else flags
    need = [f for token in isa.split() for f in ISA_CPU_FLAGS.get(token, (token,))]
    return all(f in have for f in need)

