"""Writing output files safely: all or nothing, and never over an existing file by accident.

`atomic_write` writes the bytes to a hidden temporary file in the target's directory, flushes it
to disk and then moves it into place in one step, so a reader (or a crash) never sees a half-written
file (a device or FIFO given with -f, /dev/null say, is written into instead: it is not replaced).
Used for .snail files and for decoded images. `atomic_path` does the same for writers that want a
file name (matplotlib, h5py, safetensors, pandas): every other file the package writes.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from snailcompress.errors import SnailError

__all__ = ["OutputExistsError", "atomic_path", "atomic_write", "check_directory", "check_target", "write_stream"]


class OutputExistsError(SnailError, FileExistsError):
    """The output file exists and overwriting was not asked for."""


def _reason(e: OSError) -> str:
    return e.strerror or str(e) or type(e).__name__


def _under_a_file(path: Path) -> None:
    blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise SnailError(f"cannot write {path}: {blocking} is a file, not a directory")


#: tries check_directory makes at its probe: processes started together (torchrun's ranks, commands run
#: side by side) may each make and remove the same new directory under another's probe
PROBE_ATTEMPTS = 5


def check_directory(path: str | os.PathLike) -> None:
    """Refuse (SnailError, one sentence) a directory to write into that cannot be one (a file, or a
    path under a file) or cannot be made or written (a run's or a report's --out): it is made, a
    file written in it and removed, and what was made is removed again. Callers check before the work."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SnailError(f"cannot write into {path}: it is a file, not a directory")
    _under_a_file(path)
    made = [p for p in (path, *path.parents) if not p.exists()]  # deepest first
    try:
        for attempt in range(PROBE_ATTEMPTS):
            path.mkdir(parents=True, exist_ok=True)
            try:
                fd, probe = _new_temporary(str(path), "probe")
            except FileNotFoundError:  # another process probing the same new directory removed it
                if attempt == PROBE_ATTEMPTS - 1:
                    raise
                continue
            os.close(fd)
            os.unlink(probe)
            break
    except OSError as e:
        raise SnailError(f"cannot write into {path}: {_reason(e)}") from None
    finally:
        for directory in made:
            try:
                directory.rmdir()
            except OSError:
                break


def check_target(path: str | os.PathLike, make_directories: bool = False) -> None:
    """Refuse (SnailError, one sentence) a path no file can be written at: a directory, a path under
    a file, or (unless `make_directories`) one in a directory that is not there. Callers check before
    the work that makes the file."""
    path = Path(path)
    if path.is_dir():
        raise SnailError(f"cannot write {path}: it is a directory")
    _under_a_file(path)
    if not make_directories and not path.absolute().parent.is_dir():
        raise SnailError(f"cannot write {path}: directory {path.absolute().parent} does not exist")


def atomic_write(path: str | os.PathLike, data: bytes, overwrite: bool = False, make_directories: bool = False) -> None:
    """Write ``data`` to ``path`` atomically; ``make_directories``: create its directory if it is not there.

    Refuses an existing ``path`` unless ``overwrite`` (OutputExistsError, a SnailError).  Any
    operating-system failure (missing or unwritable directory, full disk, ...) becomes a SnailError
    with one sentence.  The temporary file is removed on every failure path.
    """
    path = os.fspath(path)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    directory = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    if not name:
        raise SnailError(f"cannot write {path!r}: not a file name")
    check_target(path, make_directories)
    if not overwrite and os.path.lexists(path):
        raise OutputExistsError(f"{path} already exists (use -f to overwrite)")
    if overwrite and _is_special(path):
        _write_into(path, data)
        return

    tmp = None
    fd = -1
    try:
        if make_directories:
            os.makedirs(directory, exist_ok=True)
        fd, tmp = _new_temporary(directory, name)
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        if overwrite:
            os.replace(tmp, path)
        else:
            _move_no_clobber(tmp, path)
        tmp = None
    except SnailError:
        raise
    except PermissionError as e:
        raise SnailError(f"cannot write {path}: permission denied ({directory} is not writable)") from e
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise SnailError(f"cannot write {path}: no space left on the device") from e
        raise SnailError(f"cannot write {path}: {_reason(e)}") from e
    finally:
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _is_special(path: str) -> bool:
    """Whether `path` is there and is neither a file nor a directory: a device (/dev/null) or a FIFO."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def _write_into(path: str, data: bytes) -> None:
    """Write `data` into a device or FIFO (-f), as cp and zstd do: replacing it by a file (a temporary
    file renamed over /dev/null, say) would break it for every other program."""
    try:
        with open(path, "wb") as stream:
            stream.write(data)
    except OSError as e:
        raise SnailError(f"cannot write {path}: {_reason(e)}") from e


def write_stream(stream, data: bytes) -> None:
    """Write ``data`` to a binary stream (standard output) and flush it; an operating-system failure
    (a full disk, a closed pipe) is a SnailError in one sentence."""
    try:
        stream.write(data)
        stream.flush()
    except OSError as e:
        raise SnailError(f"cannot write to standard output: {_reason(e)}") from e


def _new_temporary(directory: str, name: str) -> tuple[int, str]:
    """An open descriptor and the path of a new hidden file beside `name` in `directory`, created
    like any new file (mode 0o666 less the umask, not private as mkstemp's) and keeping the name's
    extension last (matplotlib picks the format from it)."""
    stem, dot, suffix = name.rpartition(".")
    stem, suffix = (stem, dot + suffix) if stem else (name, "")
    for _ in range(100):
        candidate = os.path.join(directory, f".{stem}.{secrets.token_hex(6)}.tmp{suffix}")
        try:
            return os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), candidate
        except FileExistsError:
            continue
    raise SnailError(f"cannot write {os.path.join(directory, name)}: could not create a temporary file in {directory}")  # pragma: no cover


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` to write to; moved onto `path` (replacing it) when the block
    ends without an error, removed when it raises. Creates `path`'s directory. An operating-system
    failure, the writer's included (a full disk, a directory where the file should go, a file
    where a directory should), is a SnailError in one sentence."""
    path = Path(path)
    check_target(path, make_directories=True)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _new_temporary(str(path.parent), path.name)
        os.close(fd)
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as e:
        if isinstance(e, SnailError):
            raise
        raise SnailError(f"cannot write {path}: {_reason(e)}") from e
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def _move_no_clobber(tmp: str, path: str) -> None:
    """Move tmp to path, failing if path appeared meanwhile (hard link where the file system allows)."""
    try:
        os.link(tmp, path)
    except FileExistsError as e:
        raise OutputExistsError(f"{path} already exists (use -f to overwrite)") from e
    except OSError:
        # No hard links here (FAT, some network file systems): check, then replace.
        if os.path.lexists(path):
            raise OutputExistsError(f"{path} already exists (use -f to overwrite)") from None
        os.replace(tmp, path)
        return
    try:
        os.unlink(tmp)
    except OSError:  # pragma: no cover - the data is in place; only a stray link would remain
        pass
