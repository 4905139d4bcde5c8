"""Files are checked on load (issue 11, items 7 and 8): format version, checksum, one-line errors.

Every damaged file -- a flipped byte anywhere, a truncation at any length, an empty or garbage
file, a file of the other kind or a newer version -- is refused with one line naming the file,
or (a flip in bytes nothing reads, e.g. zip padding) loads exactly what was saved. Never a
silent change, never an EOFError with an empty message.
"""

from __future__ import annotations

import os
import stat

import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oneprune_ext import files, models
from oneprune_ext.pruning.compaction import prune_channels
from oneprune_ext.storage.files import FileFormatError
from oneprune_ext.graph.trace import trace_groups
from oneprune_ext.storage.saving import load_pruned, save_pruned
from oneprune_ext.storage.checkpoint import read_checkpoint

from _pruning_cases import random_keep

KIND = "oneprune_ext.test"
PAYLOAD = {"weights": torch.arange(64, dtype=torch.float32).reshape(8, 8), "half": torch.ones(5, dtype=torch.bfloat16),
           "config": {"lr": 0.1, "name": "run", "milestones": [0.3, 0.6], "nested": (1, None, True)}}



# tiny models: on a loaded 2-core machine more threads only add contention
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[str, bytes]:
    path = str(tmp_path_factory.mktemp("files") / "payload.pt")
    files.write_checked(PAYLOAD, path, KIND, 2)
    with open(path, "rb") as f:
        return path, f.read()


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b and type(a) is type(b)


def _load_or_refuse(path: str, raw: bytes) -> None:
    """The property: refused with one line naming the file, or loaded unchanged."""
    with open(path, "wb") as f:
        f.write(raw)
    try:
        got = files.read_checked(path, KIND, (2,))
    except FileFormatError as e:
        msg = str(e)
        assert "\n" not in msg and repr(path) in msg, msg
        return
    assert _same({k: got[k] for k in PAYLOAD}, PAYLOAD)


def test_roundtrip_and_checksum_covers_everything(saved) -> None:
    path, _ = saved
    got = files.read_checked(path, KIND, (2,))
    assert _same({k: got[k] for k in PAYLOAD}, PAYLOAD)
    assert got["format"] == f"{KIND}/2" and got["checksum"].startswith("sha256:")
    # any change of a value, a key, a dtype or a shape changes the checksum
    base = files.checksum(got)
    for changed in ({**got, "config": {**got["config"], "lr": 0.2}}, {**got, "extra": 1},
                    {**got, "half": got["half"].float()}, {**got, "weights": got["weights"].reshape(4, 16)},
                    {**got, "config": {**got["config"], "nested": (1, None, False)}}):
        assert files.checksum(changed) != base


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_flipped_byte_is_refused_or_harmless(saved, tmp_path, data) -> None:
    _, raw = saved
    pos = data.draw(st.integers(0, len(raw) - 1), label="byte")
    bit = data.draw(st.integers(0, 7), label="bit")
    b = bytearray(raw)
    b[pos] ^= 1 << bit
    _load_or_refuse(str(tmp_path / "flipped.pt"), bytes(b))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_truncated_file_is_refused(saved, tmp_path, data) -> None:
    _, raw = saved
    n = data.draw(st.integers(0, len(raw) - 1), label="length")
    path = str(tmp_path / "cut.pt")
    with open(path, "wb") as f:
        f.write(raw[:n])
    with pytest.raises(FileFormatError) as e:
        files.read_checked(path, KIND, (2,))
    assert "\n" not in str(e.value) and repr(path) in str(e.value)


@pytest.mark.parametrize("content, match", [
    (b"", "empty"),
    (b"garbage" * 10, "not a torch.save file"),
    (b"PK\x03\x04" + b"\x00" * 100, "truncated or corrupt"),
])
def test_empty_and_garbage(tmp_path, content: bytes, match: str) -> None:
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(FileFormatError, match=match):
        files.read_checked(path, KIND, (2,))


def test_missing_directory_kind_and_version(tmp_path) -> None:
    with pytest.raises(FileFormatError, match="no such file"):
        files.read_checked(tmp_path / "nope.pt", KIND, (2,))
    with pytest.raises(FileFormatError, match="not a regular file"):
        files.read_checked(tmp_path, KIND, (2,))
    files.write_checked({"x": 1}, tmp_path / "new.pt", KIND, 3)
    with pytest.raises(FileFormatError, match="newer oneprune_ext"):
        files.read_checked(tmp_path / "new.pt", KIND, (1, 2))
    torch.save({"model": {}}, tmp_path / "plain.pt")
    with pytest.raises(FileFormatError, match="not a checkpoint written by oneprune_ext"):
        read_checkpoint(tmp_path / "plain.pt")
    # a save_pruned file given as a training checkpoint, and the other way round
    save_pruned(models.mlp(), tmp_path / "pruned.pt")
    with pytest.raises(FileFormatError, match="pruned model written by save_pruned.*load_pruned"):
        read_checkpoint(tmp_path / "pruned.pt")
    files.write_checked({"x": 1}, tmp_path / "ck.pt", "oneprune_ext.train", 2)
    with pytest.raises(FileFormatError, match="training checkpoint"):
        load_pruned(models.mlp(), tmp_path / "ck.pt")


def test_version_1_files_still_load(tmp_path) -> None:
    """Files written before checksums (format version 1) load without the check."""
    model = models.mlp()
    path = tmp_path / "v1.pt"
    from oneprune_ext.storage.saving import structure_record
    import json

    torch.save({"format": "oneprune_ext.pruned/1", "structure": json.dumps(structure_record(model)),
                "state_dict": model.state_dict()}, path)
    fresh = load_pruned(models.mlp(), path)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))


def test_damaged_pruned_model_leaves_the_model_unchanged(tmp_path) -> None:
    torch.manual_seed(0)
    model = models.digits_cnn(width=4)
    groups = trace_groups(model, torch.randn(2, 1, 8, 8))
    prune_channels(model, groups, random_keep(groups, seed=2))
    path = tmp_path / "p.pt"
    save_pruned(model, path)
    raw = path.read_bytes()
    # a byte in the middle of the largest tensor's data
    data = torch.load(path, weights_only=True)
    needle = data["state_dict"]["fc.weight"].numpy().tobytes()[:16]
    pos = raw.index(needle) + 3
    flipped = bytearray(raw)
    flipped[pos] ^= 0x10
    path.write_bytes(bytes(flipped))
    fresh = models.digits_cnn(width=4)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(FileFormatError, match="checksum"):
        load_pruned(fresh, path)
    assert all(torch.equal(v, before[k]) for k, v in fresh.state_dict().items())


def test_permissions_follow_the_umask(tmp_path) -> None:
    old = os.umask(0o027)
    try:
        files.write_checked({"x": 1}, tmp_path / "a.pt", KIND, 2)
        save_pruned(models.mlp(), tmp_path / "b.pt")
    finally:
        os.umask(old)
    for name in ("a.pt", "b.pt"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o640, name
    assert sorted(os.listdir(tmp_path)) == ["a.pt", "b.pt"]  # no temporary file left


def test_orphans_of_an_interrupted_write_are_removed(tmp_path) -> None:
    target = tmp_path / "run.pt"
    orphan = tmp_path / ".run.pt.oneprune-dead.tmp"
    other = tmp_path / ".other.pt.oneprune-live.tmp"  # another file's: left alone
    orphan.write_bytes(b"half")
    other.write_bytes(b"half")

    class Boom(Exception):
        pass

    def failing(f):
        f.write(b"partial")
        raise Boom

    with pytest.raises(Boom):
        files.atomic_write(target, failing)
    assert not target.exists()  # an interrupted write leaves no file at the target
    assert files.remove_orphans(target) == [str(orphan)]
    assert sorted(os.listdir(tmp_path)) == [".other.pt.oneprune-live.tmp"]


def _below_file(d, *parts):
    (d / "f").write_text("x")
    return d.joinpath("f", *parts)


@pytest.mark.parametrize("make, match", [
    (lambda d: d, "is a directory"),
    (lambda d: str(d) + os.sep, "is a directory"),
    (lambda d: _below_file(d, "ck.pt"), "is a file, not a folder"),
    (lambda d: _below_file(d, "sub", "ck.pt"), "is a file, not a folder"),
    (lambda d: "/proc/oneprune-test.pt", "cannot create a file in '/proc'"),
    (lambda d: d / ("x" * 300 + ".pt"), "too long"),
    (lambda d: "", "empty"),
])
def test_check_writable_refuses(tmp_path, make, match: str) -> None:
    with pytest.raises(ValueError, match=match) as e:
        files.check_writable(make(tmp_path), "--checkpoint")
    assert str(e.value).startswith("--checkpoint: ") and "\n" not in str(e.value)


def _fifo(d):
    os.mkfifo(d / "pipe")
    return d / "pipe"


def _link_to_fifo(d):
    os.symlink(_fifo(d), d / "link")
    return d / "link"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
@pytest.mark.parametrize("make", [_fifo, _link_to_fifo], ids=["fifo", "symlink-to-fifo"])
def test_special_files_are_refused_never_replaced(tmp_path, make) -> None:
    """A device or pipe (``/dev/null``) at an output path would be replaced by the atomic rename."""
    target = make(tmp_path)
    with pytest.raises(ValueError, match="not a regular file"):
        files.check_writable(target, "--json")
    with pytest.raises(ValueError, match="not a regular file"):
        save_pruned(nn.Linear(2, 2), target)
    assert stat.S_ISFIFO(os.stat(target).st_mode)
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_check_writable_accepts_new_folders_and_leaves_nothing(tmp_path) -> None:
    assert files.check_writable(tmp_path / "a" / "b" / "ck.pt", "x").endswith("ck.pt")
    assert os.listdir(tmp_path) == []  # probed, nothing created
