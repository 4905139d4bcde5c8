"""The command line fails like a Unix tool; a resume is the same run or a refusal (issue 11, items 2 and 7).

Every user error ends in one ``oneprune: error: ...`` line and exit status 2, with no
traceback, before any training: bad option values (property-based), devices this machine
does not have, output paths that cannot be written, damaged checkpoints, a pruned model given
as a checkpoint, and a ``--resume`` whose options differ from the saved run's (each differing
option named). Options that cannot change the result may differ on resume.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from oneprune_ext import models

from oneprune_ext.cli import train as cli
from oneprune_ext.training.data import digits_loaders
from oneprune_ext.training.models import digits_cnn
from oneprune_ext.pruning.pruner import OneCyclePruner
from oneprune_ext.storage.saving import save_pruned
from oneprune_ext.training.trainer import train

RUN = ["--epochs", "3", "--width", "4", "--batch-size", "64", "--monitor-start", "0", "--sl-start", "0",
       "--sl-end", "1", "--no-progress", "--threads", "1"]


# tiny models: on a loaded 2-core machine more threads only add contention
pytestmark = pytest.mark.usefixtures("one_thread")


def _main(argv: list[str]) -> tuple[int, str]:
    """``oneprune argv`` in this process: (exit status, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = cli.main(argv)
        except SystemExit as e:
            rc = e.code
    return rc, err.getvalue()


def _assert_one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("oneprune: error: "), err
    for n in needles:
        assert n in errors[0], (n, errors[0])


# ------------------------------------------------------------------------------------ option values

NUMBER_FLAGS = ["--lr", "--weight-decay", "--seed", "--epochs", "--batch-size", "--width", "--workers", "--threads",
                "--reduction", "--reg", "--reg-delta", "--reg-interval", "--stability-threshold", "--layer-limit",
                "--layer-limit-k", "--round-to", "--monitor-start", "--sl-start", "--sl-end"]
TEXT = st.one_of(
    st.sampled_from(["inf", "-inf", "nan", "-1", "0", "-0.0", "1e400", "4294967296", "", "abc", "0x10", "1.5", "2",
                     "1e-3", "auto"]),
    st.integers(-10**12, 10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)


@settings(max_examples=150, deadline=None)
@given(flag=st.sampled_from(NUMBER_FLAGS), text=TEXT)
def test_any_option_value_parses_or_is_one_error_line(flag: str, text: str) -> None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            args = cli.parse_args([flag, text])
        except SystemExit as e:
            _assert_one_line_error(e.code, err.getvalue())
            return
    # accepted: every number the run uses is finite and in its documented range
    assert args.lr > 0 and args.weight_decay >= 0 and 0 <= args.seed < 2**32
    for v in args.pruner_config.to_dict().values():
        assert not isinstance(v, float) or v == v and abs(v) != float("inf")
    assert 0 < args.reduction < 1


@pytest.mark.parametrize("device, needle", [
    ("tpu7", "'tpu7' is not a torch device"),
    ("cuda:99", "cuda"),
    ("meta", "cannot train on meta"),
    ("gpu", "not a torch device"),
])
def test_devices_this_machine_does_not_have(device: str, needle: str) -> None:
    rc, err = _main(["--device", device])
    _assert_one_line_error(rc, err, "--device", needle)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_a_gpu() -> None:
    rc, err = _main(["--device", "cuda"])
    _assert_one_line_error(rc, err, "--device", "use --device cpu")


# ------------------------------------------------------------------------------------ files up front


@pytest.mark.parametrize("flags, needle", [
    (lambda d: ["--checkpoint", "/proc/oneprune/ck.pt"], "--checkpoint: cannot write"),
    (lambda d: ["--checkpoint", str(d)], "is a directory"),
    (lambda d: ["--json", str(d / "afile" / "r.json")], "is a file, not a folder"),
    (lambda d: ["--save", str(d / "afile" / "x" / "m.pt")], "is a file, not a folder"),
    (lambda d: ["--save", str(d) + os.sep], "--save: "),
    (lambda d: ["--checkpoint", str(d / "a.pt"), "--json", str(d / "a.pt")], "name the same file"),
    (lambda d: ["--checkpoint", str(d / "a.pt"), "--save", str(d / "a.dense.pt"), "--dense-baseline"],
     "name the same file"),
    (lambda d: ["--checkpoint", ""], "empty"),
], ids=["unwritable", "directory", "parent-is-file", "grandparent-is-file", "trailing-slash", "same-file",
        "dense-checkpoint", "empty"])
def test_output_paths_are_checked_before_training(tmp_path, flags, needle: str) -> None:
    (tmp_path / "afile").write_text("x")
    before = sorted(os.listdir(tmp_path))
    rc, err = _main(flags(tmp_path) + RUN)
    _assert_one_line_error(rc, err, needle)
    assert sorted(os.listdir(tmp_path)) == before  # nothing trained, nothing written


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
@pytest.mark.parametrize("flag", ["--checkpoint", "--json", "--save"])
def test_a_device_or_pipe_as_output_is_refused_not_replaced(tmp_path, flag: str) -> None:
    """``--json /dev/null`` would replace the device by the atomic rename (as root)."""
    os.mkfifo(tmp_path / "pipe")
    rc, err = _main([flag, str(tmp_path / "pipe")] + RUN)
    _assert_one_line_error(rc, err, flag, "not a regular file")
    assert stat.S_ISFIFO(os.stat(tmp_path / "pipe").st_mode) and os.listdir(tmp_path) == ["pipe"]


# ------------------------------------------------------------------------------------ resume


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> str:
    """A checkpoint of a whole (3-epoch) run: resuming it trains nothing, so refusals and
    acceptances are cheap to test."""
    path = str(tmp_path_factory.mktemp("run") / "ck.pt")
    torch.set_num_threads(1)
    rc, err = _main(RUN + ["--checkpoint", path, "--dense-baseline"])
    assert rc == 0, err
    return path


@pytest.mark.parametrize("change, flag", [
    (["--reduction", "0.4"], "--reduction"), (["--target", "params"], "--target"), (["--seed", "1"], "--seed"),
    (["--batch-size", "32"], "--batch-size"), (["--regularizer", "group_lasso"], "--regularizer"),
    (["--lr", "0.05"], "--lr"), (["--weight-decay", "0"], "--weight-decay"), (["--reg", "0.001"], "--reg"),
    (["--stability-threshold", "0.9"], "--stability-threshold"), (["--schedule", "cosine"], "--schedule"),
])
def test_resume_with_other_options_is_refused_naming_them(finished_run: str, change: list[str], flag: str) -> None:
    argv = RUN + ["--checkpoint", finished_run, "--resume"]
    for i in range(0, len(change), 2):  # replace the flag's value where RUN sets it
        if change[i] in argv:
            argv[argv.index(change[i]) + 1] = change[i + 1]
        else:
            argv += change[i:i + 2]
    with open(finished_run, "rb") as f:
        saved = f.read()
    rc, err = _main(argv)
    _assert_one_line_error(rc, err, "other options", f"{flag} ", "(saved)", "(now)")
    with open(finished_run, "rb") as f:
        assert f.read() == saved


def test_resume_names_every_differing_option(finished_run: str) -> None:
    argv = RUN + ["--checkpoint", finished_run, "--resume", "--seed", "5", "--reduction", "0.3"]
    argv[argv.index("--width") + 1] = "6"
    rc, err = _main(argv)
    _assert_one_line_error(rc, err, "--seed 0 (saved) vs 5 (now)", "--reduction 0.5 (saved) vs 0.3 (now)",
                           "--width 4 (saved) vs 6 (now)")


def test_resume_accepts_options_that_cannot_change_the_result(finished_run: str, tmp_path) -> None:
    argv = [a for a in RUN if a != "--no-progress"]
    argv[argv.index("--threads") + 1] = "2"
    rc, err = _main(argv + ["--checkpoint", finished_run, "--resume", "--json", str(tmp_path / "r.json")])
    assert rc == 0, err
    assert (tmp_path / "r.json").exists()


def _damaged(path: str, tmp_path, how: str) -> str:
    raw = open(path, "rb").read()
    out = tmp_path / f"{how}.pt"
    if how == "truncated":
        out.write_bytes(raw[: len(raw) // 3])
    elif how == "empty":
        out.write_bytes(b"")
    elif how == "garbage":
        out.write_bytes(os.urandom(4096))
    elif how == "flipped":  # one bit of a weight
        weight = torch.load(path, weights_only=True)["model"]["fc.weight"]
        b = bytearray(raw)
        b[raw.index(weight.numpy().tobytes()[:16]) + 5] ^= 0x01
        out.write_bytes(bytes(b))
    else:  # a save_pruned file
        save_pruned(digits_cnn(width=4), out)
    return str(out)


@pytest.mark.parametrize("how, needle", [("truncated", "truncated or corrupt"), ("empty", "empty"),
                                         ("garbage", "not a file written by oneprune_ext"),
                                         ("flipped", "checksum"),
                                         ("pruned", "save_pruned, not a training checkpoint")])
def test_damaged_checkpoint_is_one_line(finished_run: str, tmp_path, how: str, needle: str) -> None:
    path = _damaged(finished_run, tmp_path, how)
    rc, err = _main(RUN + ["--checkpoint", path, "--resume"])
    _assert_one_line_error(rc, err, repr(path))
    assert any(n in err for n in needle.split("|")), err


def test_a_refusal_in_a_real_process_is_one_line_without_traceback(tmp_path) -> None:
    bad = tmp_path / "ck.pt"
    bad.write_bytes(b"\x00" * 10)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    for argv in (["--lr", "inf"], RUN + ["--checkpoint", str(bad), "--resume"]):
        proc = subprocess.run([sys.executable, "-m", "oneprune_ext.cli", *argv], capture_output=True, text=True,
                              env=env, timeout=300)
        _assert_one_line_error(proc.returncode, proc.stderr)
        assert proc.stdout == ""


# ------------------------------------------------------------------------------------ train() itself


def test_train_refuses_other_run_options_and_leaves_the_model(tmp_path) -> None:
    loaders = digits_loaders(batch_size=128, seed=0)
    path = tmp_path / "ck.pt"

    def run(options, reduction=0.5, width=4):
        torch.manual_seed(0)
        model = models.digits_cnn(width=width)
        pruner = OneCyclePruner(model, torch.zeros(1, 1, 8, 8), total_epochs=2, monitor_start=0, sl_start=0,
                                sl_end=1, reduction=reduction)
        return model, lambda: train(model, *loaders, epochs=2, pruner=pruner, progress=False, checkpoint=path,
                                    resume=True, run_options=options)

    _, go = run({"data": "digits", "seed": 0})
    assert go().prune_epoch is not None
    model, go = run({"data": "digits", "seed": 1})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"other settings: seed: 0 \(saved\) vs 1 \(now\)"):
        go()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    model, go = run({"data": "digits", "seed": 0}, reduction=0.4)
    with pytest.raises(ValueError, match=r"reduction=0.5 \(saved\) vs 0.4"):
        go()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    model, go = run({"data": "digits", "seed": 0}, width=6)  # another model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"resume from .*ck\.pt: .*does not match this model.s channel groups"):
        go()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_train_checks_the_checkpoint_path_before_training(tmp_path) -> None:
    loaders = digits_loaders(batch_size=128, seed=0)
    model = models.digits_cnn(width=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    (tmp_path / "afile").write_text("x")
    for bad, match in ((tmp_path, "is a directory"), (tmp_path / "afile" / "ck.pt", "is a file, not a folder")):
        with pytest.raises(ValueError, match=match):
            train(model, *loaders, epochs=1, progress=False, checkpoint=bad)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # not one step taken
    orphan = tmp_path / ".ck.pt.oneprune-0000.tmp"
    orphan.write_bytes(b"half a checkpoint")
    train(model, *loaders, epochs=1, progress=False, checkpoint=tmp_path / "ck.pt")
    assert sorted(os.listdir(tmp_path)) == ["afile", "ck.pt"]  # the orphan is gone
