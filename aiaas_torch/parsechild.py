"""Parsing a large CSV file's numbers in a second process while this one imports torch and loads the model.

The child is this file run as a plain script (`python parsechild.py SPEC`): it imports numpy and the standard library
only, reads the CSV lines after the header exactly as filerows.RowReader would (same encoding, same line splitting),
and writes one record per chunk to its stdout, no pickle:

    HEAD (little-endian: kind u8, rows u32, cols u32, first line u64, characters read so far u64,
          then the byte lengths of three sections u64 × 3: line numbers, data, ids)
    NUMBERS: data = rows × cols float32 (checked: finite, within float32, each line's field count), line numbers
             (int64) only when blank lines were left out, ids (UTF-8, each ending with "\\n") with an id column;
    LINES:   a chunk that is not plain numbers: data = its non-blank lines as UTF-8 text, line numbers (int64);
             the parent reads them cell by cell (filerows: the same code, so the same messages and line numbers);
    REREAD:  the child cannot go on (text that is not UTF-8): the parent reads the file itself from line `first`;
    END:     the end of the file.

Memory: the child parses ahead into a queue of at most max(2, BUFFER_BYTES // a chunk's float32 bytes) records (16
chunks of 50,000 × 20), so that it keeps parsing while the parent imports torch; then the pipe's back-pressure stops
it. In flight at most: the queue, one record being written (up to 1 MiB of it in the pipe), one chunk being parsed,
and the one the parent holds. The child's peak RSS (os.wait4) also counts the parent's image it was forked from
before exec (about 35 MB, before torch), below its own. It ends when the parent ends: the
parent kills it on any exit (RowReader.close), and a parent killed outright takes it along (PR_SET_PDEATHSIG, and a
write to a closed pipe ends it in any case).
"""

from __future__ import annotations

import itertools
import json
import os
import struct
import sys

import numpy as np

HEAD = struct.Struct("<BIIQQQQQ")
NUMBERS, LINES, REREAD, END = 1, 2, 3, 4
BUFFER_BYTES = 64 << 20  # records parsed ahead in the child: ~3 s of parsing at 20 features, most of the parent's import time
# the largest float32 (handlers/contract_common.FLOAT32_MAX; this file runs as a plain script and cannot import it)
FLOAT32_MAX = float(np.finfo(np.float32).max)


def nonblank(lines: list[str], numbers: list[int]) -> tuple[list[str], list[int]]:
    """Return the lines that hold a row (not blank) and their line numbers."""
    if all(map(str.strip, lines)):
        return lines, numbers
    kept = [(n, ln) for n, ln in zip(numbers, lines) if ln.strip()]
    return [ln for _, ln in kept], [n for n, _ in kept]


def plain_numbers(lines: list[str], cols: list[int], id_col, width: int, raw: bool):
    """Return (float64 array rows × features, ids or None) when non-blank CSV lines are all plain numbers, else None.

    Plain: numpy parses every feature cell as a finite number within float32, and each line has the header's field
    count; anything else (text, blanks, quotes) is for the general path, which names the line.
    """
    if not lines or not (raw or '"' not in "".join(lines)):  # numpy refuses a quoted number; a skipped column may hide one
        return None
    try:
        arr = np.loadtxt(lines, delimiter=",", dtype=np.float64, usecols=cols, ndmin=2, comments=None)
    except ValueError:  # text, blanks, a wrong field count
        return None
    if arr.shape != (len(lines), len(cols)) or not bool(np.isfinite(arr).all()) or float(np.abs(arr).max(initial=0)) > FLOAT32_MAX:
        return None
    # numpy reads only the feature columns: a line with more fields than the header would pass unseen
    if not all(ln.count(",") == width - 1 for ln in lines):
        return None
    return arr, ids_of(lines, id_col)


def ids_of(lines: list[str], id_col) -> list[str] | None:
    """Return each line's id cell (stripped), or None without an id column; for lines without quotes."""
    return None if id_col is None else [ln.rstrip("\r\n").split(",")[id_col].strip() for ln in lines]


# ------------------------------------------------------------------------------------------------ parent side


class Parser:
    """A started parser process (a subprocess.Popen) and its records (iterate it); close() ends it."""

    def __init__(self, proc, first: int, chunk_rows: int):
        self.proc = proc
        self.next_line = first  # the first line of the chunk not yet received
        self.chunk_rows = chunk_rows
        self.peak_rss_mb: float | None = None  # the child's own peak, once it ended

    def __iter__(self):
        """Yield (kind, first line, characters read, line numbers or None, data, ids or None) for each record.

        A record cut short (the child died) ends the iteration as REREAD from the first line not yet received.
        """
        f = self.proc.stdout
        while True:
            head = _read_exactly(f, HEAD.size)
            parts = None
            if head is not None:
                kind, rows, cols, line, done, nlen, dlen, ilen = HEAD.unpack(head)
                parts = [_read_exactly(f, n, writable=(i == 1)) for i, n in enumerate((nlen, dlen, ilen))]
            if parts is None or any(p is None for p in parts):
                yield REREAD, self.next_line, None, None, None, None
                return
            if kind in (END, REREAD):
                self._reap()
                yield kind, line, done, None, None, None
                return
            numbers = np.frombuffer(parts[0], dtype=np.int64).tolist() if nlen else list(range(line, line + rows))
            ids = parts[2].decode("utf-8").split("\n")[:-1] if ilen else None  # each id ends with "\n"
            if kind == NUMBERS:
                data = np.frombuffer(parts[1], dtype=np.float32).reshape(rows, cols)
            else:
                data = parts[1].decode("utf-8")
            self.next_line = line + self.chunk_rows  # every chunk but the last has chunk_rows lines, blank or not
            yield kind, line, done, numbers, data, ids

    def _reap(self) -> None:
        """Wait for the ended child and keep its peak RSS."""
        if not hasattr(os, "wait4"):  # not a POSIX system: no peak to read
            self.proc.wait()
            return
        try:
            _, status, usage = os.wait4(self.proc.pid, 0)
        except ChildProcessError:  # already waited for (Popen.kill polls first)
            return
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self.peak_rss_mb = round(usage.ru_maxrss / 1024, 1)

    def close(self) -> None:
        """End the child (if it still runs) and wait for it."""
        if self.proc.returncode is None:
            self.proc.kill()
            self._reap()
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


def _read_exactly(f, n: int, writable: bool = False):
    """Return n bytes read from f (a bytearray when writable: numpy arrays over it are writable), None at an early end."""
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = f.readinto(view[got:])
        if not k:
            return None
        got += k
    return buf if writable else bytes(buf)


def start(path, skip: int, first: int, chunk_rows: int, cols: list[int], id_col, width: int, raw: bool) -> Parser | None:
    """Return a started Parser for a CSV file's lines after its first `skip` lines, or None when none can start."""
    import subprocess

    spec = json.dumps({"path": str(path), "skip": skip, "first": first, "chunk_rows": chunk_rows, "cols": cols,
                       "id_col": id_col, "width": width, "raw": raw, "parent": os.getpid(),
                       "buffer_bytes": BUFFER_BYTES})
    try:
        proc = subprocess.Popen([sys.executable, "-I", os.path.abspath(__file__), spec], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    except OSError:
        return None
    try:  # fewer, larger reads of each 4 MB record
        import fcntl

        fcntl.fcntl(proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)
    except (ImportError, AttributeError, OSError):
        pass
    return Parser(proc, first, chunk_rows)


# ------------------------------------------------------------------------------------------------ child side


def _record(kind: int, rows: int = 0, cols: int = 0, line: int = 0, done: int = 0, numbers=b"", data=b"", ids=b"") -> list:
    """Return one record's header and sections (bytes, or arrays written as their bytes)."""
    return [HEAD.pack(kind, rows, cols, line, done, numbers.nbytes if isinstance(numbers, np.ndarray) else len(numbers),
                      data.nbytes if isinstance(data, np.ndarray) else len(data), len(ids)), numbers, data, ids]


def _chunk_record(lines: list[str], first: int, done: int, spec: dict):
    """Return the record of one chunk of lines starting at line `first` (None when all are blank)."""
    numbers = list(range(first, first + len(lines)))
    kept, kept_numbers = nonblank(lines, numbers)
    if not kept:
        return None
    sent = np.asarray(kept_numbers, dtype=np.int64)
    parsed = plain_numbers(kept, spec["cols"], spec["id_col"], spec["width"], spec["raw"])
    if parsed is None:
        return _record(LINES, len(kept), 0, first, done, sent, "".join(kept).encode("utf-8"))
    arr, ids = parsed
    return _record(NUMBERS, arr.shape[0], arr.shape[1], first, done, b"" if len(kept) == len(lines) else sent,
                   arr.astype(np.float32), b"" if ids is None else "".join(i + "\n" for i in ids).encode("utf-8"))


def _parse(spec: dict, put) -> None:
    """Parse the file's chunks into records and hand each to `put`."""
    line, done = spec["first"] - 1, 0
    with open(spec["path"], encoding="utf-8-sig", newline="") as f:
        try:
            for _ in range(spec["skip"]):
                done += len(f.readline())
            while True:
                lines = list(itertools.islice(f, spec["chunk_rows"]))
                if not lines:
                    put(_record(END, line=line + 1, done=done))
                    return
                done += sum(map(len, lines))
                first, line = line + 1, line + len(lines)
                record = _chunk_record(lines, first, done, spec)
                del lines  # not held while the next chunk is read
                if record is not None:
                    put(record)
                del record
        except UnicodeDecodeError:  # the parent reads it again itself, to name it as it always does
            put(_record(REREAD, line=line + 1))


def _die_with_parent(parent: int) -> None:
    """Have the kernel end this process when its parent ends (Linux); on other systems a closed pipe ends it."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # it ended before the line above
        os._exit(1)


def main(argv: list[str]) -> int:
    """Run the child: parse the file named in argv[0] (a JSON spec) and write its records to stdout; returns 0."""
    import queue
    import signal
    import threading

    spec = json.loads(argv[0])
    _die_with_parent(spec["parent"])
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C reaches the whole process group: end quietly
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    chunk_bytes = max(1, spec["chunk_rows"] * len(spec["cols"]) * 4)
    records: queue.Queue = queue.Queue(maxsize=max(2, spec["buffer_bytes"] // chunk_bytes))
    out = open(sys.stdout.fileno(), "wb", closefd=False)

    def write() -> None:  # a thread: the pipe's writes wait for the parent while the main thread parses on
        while True:
            rec = records.get()
            for part in rec:
                out.write(part)
            out.flush()
            if rec[0][0] in (END, REREAD):
                return

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    _parse(spec, records.put)
    writer.join()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
