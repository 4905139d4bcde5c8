"""The files this package writes: atomic, versioned, checksummed, checked before use.

Every file written here (:func:`oneprune_ext.save_pruned` files, the trainer's checkpoints)
is one ``torch.save`` dict (loadable with ``torch.load(weights_only=True)``) that carries

* ``"format"``: ``"<kind>/<version>"``, e.g. ``"oneprune_ext.train/2"``: what wrote it and
  the version of its layout;
* ``"checksum"``: ``"sha256:<hex>"`` of everything else in the dict: every tensor's dtype,
  shape and bytes, and every number, string and key, walked in order.

:func:`read_checked` refuses, with one line that names the file and says what to do, a
missing, empty, truncated or garbage file, a file of another kind (a pruned model given as a
checkpoint), a version this code does not read, and a file whose contents no longer match
its checksum (a flipped byte). Files of version 1 (written before checksums) are read
without the check.

Writes are atomic (:func:`atomic_write`): a temporary file ``.NAME.oneprune-XXXX.tmp`` in the
same folder, fsync, ``os.replace``; a crash never leaves a half-written ``NAME``, and
:func:`remove_orphans` deletes the temporary files an interrupted write left behind. Files
are created with the usual permissions (``0o666`` minus the umask), like ``open(path, "w")``.
:func:`check_writable` tells up front whether a path can be written at all.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import math
import os
import secrets
from typing import Any, Callable, Mapping, Sequence

import torch

__all__ = ["FileFormatError", "write_checked", "read_checked", "checksum", "atomic_write",
           "remove_orphans", "check_writable", "first_line"]

#: What each kind of file is, and how it is used (for messages about a file given in the wrong place).
KINDS = {
    "oneprune_ext.pruned": ("a pruned model written by save_pruned", "load it with load_pruned(model, path)"),
    "oneprune_ext.train": ("a training checkpoint written by oneprune_ext.training.trainer (oneprune --checkpoint)",
                           "resume it with train(..., resume=True) or oneprune --resume"),
}
_TMP_INFIX = ".oneprune-"
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive


class FileFormatError(ValueError):
    """A file that cannot be used: unreadable, corrupt, of another kind or version (one line)."""


# ---------------------------------------------------------------------------------------- checksum


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    t = t.detach()
    if t.layout != torch.strided:
        t = t.to_dense()
    if t.is_quantized:
        t = t.int_repr()
    t = t.resolve_conj().resolve_neg().cpu().contiguous().reshape(-1)
    return memoryview(t.view(torch.uint8).numpy())


def _feed(h: Any, obj: Any) -> None:
    """Hash ``obj`` (what ``torch.load(weights_only=True)`` returns) in a canonical order."""
    if isinstance(obj, torch.Tensor):
        h.update(f"T{obj.dtype}{tuple(obj.shape)}".encode())
        if obj.device.type != "meta":
            h.update(_tensor_bytes(obj))
    elif isinstance(obj, Mapping):
        h.update(f"D{len(obj)}".encode())
        for k, v in obj.items():
            _feed(h, k)
            _feed(h, v)
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        for v in obj:
            _feed(h, v)
    elif isinstance(obj, (set, frozenset)):
        h.update(f"S{len(obj)}".encode())
        for r in sorted(repr(v) for v in obj):
            h.update(r.encode())
    elif isinstance(obj, bool) or obj is None:
        h.update(f"B{obj}".encode())
    elif isinstance(obj, int):
        h.update(f"I{obj};".encode())
    elif isinstance(obj, float):
        h.update(f"F{obj.hex() if math.isfinite(obj) else repr(obj)};".encode())
    elif isinstance(obj, str):
        b = obj.encode("utf-8", "surrogatepass")
        h.update(f"U{len(b)}:".encode())
        h.update(b)
    elif isinstance(obj, (bytes, bytearray)):
        h.update(f"Y{len(obj)}:".encode())
        h.update(obj)
    else:  # torch.dtype, torch.device, numpy scalars, ...: their repr is their value
        h.update(f"O{type(obj).__name__}:{obj!r};".encode())


def checksum(payload: Mapping[str, Any]) -> str:
    """``"sha256:<hex>"`` of every entry of ``payload`` except ``"checksum"`` (see module docs)."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in payload.items() if k != "checksum"})
    return "sha256:" + h.hexdigest()


# ---------------------------------------------------------------------------------------- writing


def _tmp_name(path: str) -> str:
    directory, base = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{base}{_TMP_INFIX}{secrets.token_hex(4)}.tmp")


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], *, binary: bool = True) -> None:
    """Write ``path`` atomically: ``write(f)`` into a temporary file in the same folder, fsync,
    ``os.replace``. Missing parent folders are created. The file gets ``0o666`` minus the umask.
    A device, pipe or socket at ``path`` is refused (ValueError), never replaced."""
    path = os.fspath(path)
    _refuse_special(path, "atomic_write")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = _tmp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def _refuse_special(path: str, what: str) -> None:
    """A device, pipe or socket (``/dev/null``, ...) would be replaced by the rename: refuse it."""
    if os.path.exists(path) and not os.path.isfile(path) and not os.path.isdir(path):
        raise ValueError(f"{what}: {path!r} exists and is not a regular file (a device, pipe or socket); "
                         "an atomic write would replace it: give the path of a regular file")


def _fsync_dir(directory: str) -> None:
    """Make the rename durable (best effort: not every platform / file system allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_checked(payload: Mapping[str, Any], path: str | os.PathLike, kind: str, version: int) -> None:
    """``torch.save`` ``payload`` plus ``"format"`` and ``"checksum"`` entries, atomically."""
    data = {"format": f"{kind}/{version}", **{k: v for k, v in payload.items() if k not in ("format", "checksum")}}
    data["checksum"] = checksum(data)
    atomic_write(path, lambda f: torch.save(data, f))


def remove_orphans(path: str | os.PathLike) -> list[str]:
    """Delete the temporary files an interrupted :func:`atomic_write` of ``path`` left next to it.

    Returns the removed paths. Only ``.NAME.oneprune-*.tmp`` files of this ``path`` are touched.
    """
    directory, base = os.path.split(os.path.abspath(os.fspath(path)))
    removed = []
    for tmp in glob.glob(os.path.join(glob.escape(directory), f".{glob.escape(base)}{_TMP_INFIX}*.tmp")):
        try:
            os.unlink(tmp)
            removed.append(tmp)
        except FileNotFoundError:
            pass
    return removed


def check_writable(path: Any, what: str) -> str:
    """Check up front that ``path`` can be written by :func:`atomic_write`; returns it as a str.

    Refuses (ValueError, one line naming ``what``, e.g. ``"--checkpoint"``): an empty path, a
    directory, a device, pipe or socket (``/dev/null``: the rename would replace it), a path
    below a file, a folder that cannot be created or written. Probes by
    creating and deleting a temporary file, so it answers for this process's permissions.
    """
    if path is None or (isinstance(path, str) and not path.strip()):
        raise ValueError(f"{what}: the path is empty")
    try:
        text = os.fspath(path)
    except TypeError:
        raise ValueError(f"{what}: expected a file path, got {path!r}") from None
    if not isinstance(text, str):
        text = os.fsdecode(text)
    if "\x00" in text:
        raise ValueError(f"{what}: the path {text!r} contains a NUL character")
    if text.endswith(os.sep) or os.path.isdir(text):
        raise ValueError(f"{what}: {text!r} is a directory; give a file name in it (e.g. {os.path.join(text, 'run.pt')!r})")
    _refuse_special(text, what)
    full = os.path.abspath(text)
    parent = os.path.dirname(full)
    probe_dir = parent
    while not os.path.isdir(probe_dir):  # the nearest folder that exists
        if os.path.lexists(probe_dir):
            raise ValueError(f"{what}: cannot write {text!r}: {probe_dir!r} is a file, not a folder")
        up = os.path.dirname(probe_dir)
        if up == probe_dir:
            break
        probe_dir = up
    name = os.path.basename(full) if probe_dir == parent else os.path.relpath(full, probe_dir).split(os.sep)[0]
    probe = os.path.join(probe_dir, f".{name}{_TMP_INFIX}{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        reason = os.strerror(e.errno) if e.errno else str(e)
        if e.errno == errno.ENAMETOOLONG:
            raise ValueError(f"{what}: cannot write {text!r}: {reason}") from None
        raise ValueError(f"{what}: cannot write {text!r}: cannot create a file in {probe_dir!r} ({reason})") from None
    os.close(fd)
    os.unlink(probe)
    return text


# ---------------------------------------------------------------------------------------- reading


def _wrong_kind(fmt: Any, kind: str) -> str:
    want = KINDS.get(kind, (kind, ""))[0]
    other = fmt.rpartition("/")[0] if isinstance(fmt, str) else None
    if other in KINDS:
        what, how = KINDS[other]
        return f"this is {what}, not {want}; {how}"
    return f"not a checkpoint written by oneprune_ext (expected {want})"


def read_checked(path: str | os.PathLike, kind: str, versions: Sequence[int], *,
                 map_location: Any = "cpu", use: str = "") -> dict[str, Any]:
    """Load a file written by :func:`write_checked` and check it; returns the dict.

    Args:
        path: the file.
        kind: the kind expected (``"oneprune_ext.train"``, ``"oneprune_ext.pruned"``).
        versions: the versions this code reads (version 1 has no checksum).
        map_location: passed to ``torch.load``.
        use: what the file is read for, for the message (e.g. ``"--resume"``).

    Raises:
        FileFormatError: one line naming the file: missing, not a regular file, empty,
            truncated or not a ``torch.save`` file, of another kind, an unsupported version,
            or contents that do not match the checksum.
    """
    p = os.fspath(path)
    where = f"{use + ': ' if use else ''}{p!r}"
    if not os.path.exists(p):
        raise FileFormatError(f"{where}: no such file")
    if not os.path.isfile(p):
        raise FileFormatError(f"{where}: not a regular file")
    size = os.path.getsize(p)
    if size == 0:
        raise FileFormatError(f"{where}: the file is empty (an interrupted copy?)")
    with open(p, "rb") as f:
        head = f.read(4)
    if head != _ZIP_MAGIC:
        raise FileFormatError(f"{where}: not a file written by oneprune_ext (not a torch.save file; {size} bytes)")
    try:
        data = torch.load(p, map_location=map_location, weights_only=True)
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except BaseException as e:  # noqa: BLE001 - every reader failure means the same to the user
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0][:100]
        raise FileFormatError(f"{where}: truncated or corrupt ({size} bytes; torch.load: {reason})") from None
    fmt = data.get("format") if isinstance(data, dict) else None
    name, _, ver = fmt.rpartition("/") if isinstance(fmt, str) else ("", "", "")
    if name != kind:
        raise FileFormatError(f"{where}: {_wrong_kind(fmt, kind)}")
    if not ver.isdigit() or int(ver) not in versions:
        newest = max(versions)
        hint = "written by a newer oneprune_ext; upgrade it" if ver.isdigit() and int(ver) > newest else "unknown"
        raise FileFormatError(f"{where}: format version {ver!r} ({hint}); this version reads "
                              f"{', '.join(str(v) for v in versions)}")
    if int(ver) >= 2:
        saved = data.get("checksum")
        if not isinstance(saved, str) or checksum(data) != saved:
            raise FileFormatError(f"{where}: contents do not match the file's checksum (the file is corrupt: "
                                  "a damaged disk or an incomplete copy); use another copy")
    return data


def first_line(err: BaseException) -> str:
    """The message of ``err`` on one line (for command-line errors)."""
    return " ".join(str(err).split()) or type(err).__name__
