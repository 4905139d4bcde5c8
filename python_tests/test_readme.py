"""Every README code block that shows a training loop runs as written (issue 8, item 1).

The blocks are read from README.md at test time (never copied here), so the README cannot
drift from what works. The DDP block runs under torchrun in test_ddp.py.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess

import outcomes
import pytest
import torch

import oneprune_ext as op

import readme_blocks

BLOCKS = readme_blocks.single_process_blocks()


# tiny models: on a loaded 2-core machine more threads only add contention
pytestmark = pytest.mark.usefixtures("one_thread")


def test_readme_has_the_loops() -> None:
    # the plain loop, AMP, gradient accumulation (single process) and DDP
    assert len(BLOCKS) >= 3
    assert any("GradScaler" in b for b in BLOCKS) and any("accumulate" in b for b in BLOCKS)
    assert readme_blocks.ddp_block()


@pytest.mark.outcome
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_loop_runs_and_prunes(index: int) -> None:
    block = BLOCKS[index]
    ns = readme_blocks.namespace(epochs=readme_blocks.epochs_for(block))
    dense = sum(p.numel() for p in ns["model"].parameters())
    step = outcomes.one_channel_share(ns["model"], ns["example_inputs"])
    exec(compile(block, f"README.md (loop block {index})", "exec"), ns)
    pruner, model = ns["pruner"], ns["model"]
    assert pruner.pruned, "the README loop should prune within its epochs"
    assert sum(p.numel() for p in model.parameters()) < dense
    # the target is reached, overshot by less than one channel
    outcomes.assert_reaches_target(1 - pruner.macs() / pruner.dense_macs, pruner.config.reduction, step)
    if "ema" in ns:  # a tracked average lost the same channels and kept updating
        shapes = {k: v.shape for k, v in model.state_dict().items()}
        assert {k: v.shape for k, v in ns["ema"].module.state_dict().items()} == shapes
        assert int(ns["ema"].n_averaged) == ns["epochs"] * len(ns["train_loader"])
    x, y = next(iter(ns["train_loader"]))
    loss = ns["criterion"](model(x), y)
    assert torch.isfinite(loss)
    loss.backward()  # and it keeps training


# ------------------------------------------------------------------ every other block of the README

# Python blocks run by another test, found by a string the block contains.
RUN_ELSEWHERE = {
    "op.trace_report(": "test_torchvision.py::test_readme_coverage_snippet and "
                        "test_detection.py::test_readme_detector_snippet (check what they print)",
    "process_group=": "test_ddp.py (the DDP loop under torchrun)",
    "OneCyclePruning(": "test_lightning.py::test_readme_lightning_example (the whole example, as written)",
}


def test_every_code_block_is_run_by_a_test() -> None:
    """A new README block fails here until a test runs it (loops, fragments and commands are
    picked up by the tests below by themselves)."""
    fragments = readme_blocks.epoch_end_fragments()
    for lang, block in readme_blocks.fenced_blocks():
        if lang == "python":
            assert (block in BLOCKS or block in fragments or any(k in block for k in RUN_ELSEWHERE)), \
                f"README python block not run by any test:\n{block}"
        else:
            assert lang == "bash", f"README block in {lang!r}: teach test_readme.py to run it"
    for line in readme_blocks.command_lines():
        assert _command_kind(line), f"README command {line!r}: teach test_readme.py to check it"


def _evaluate(model: torch.nn.Module, loader) -> float:
    model.eval()
    with torch.no_grad():
        right = sum(int((model(x).argmax(1) == y).sum()) for x, y in loader)
    model.train()
    return 100.0 * right / len(loader.dataset)


@pytest.mark.parametrize("index", range(len(readme_blocks.epoch_end_fragments())))
def test_readme_epoch_end_fragment_runs(index: int, capsys) -> None:
    """A fragment that stands for a loop's ``epoch_end`` line runs in the README's main loop."""
    fragment = readme_blocks.epoch_end_fragments()[index]
    ns = readme_blocks.namespace()
    ns.update(evaluate=_evaluate, test_loader=ns["train_loader"])
    model, opt, crit, sched = ns["model"], ns["optimizer"], ns["criterion"], ns["scheduler"]
    pruner = ns["pruner"] = op.OneCyclePruner(model, ns["example_inputs"], ns["config"])
    code = compile(fragment, f"README.md (epoch_end fragment {index})", "exec")
    for epoch in range(ns["epochs"]):
        pruner.epoch_start(epoch)
        for x, y in ns["train_loader"]:
            opt.zero_grad()
            crit(model(x), y).backward()
            pruner.before_step()
            opt.step()
            pruner.after_step(sched.get_last_lr()[0])
        sched.step()
        ns["epoch"] = epoch
        exec(code, ns)
    assert pruner.pruned
    if "print(" in fragment:
        assert capsys.readouterr().out.strip(), "the fragment's print ran at the prune"


def _command_kind(line: str) -> str | None:
    words = shlex.split(line)
    if words[:1] == ["make"]:
        return "make"
    if words[:1] == ["oneprune"]:
        return {"profile": "profile", "eval": "eval", "plot": "plot"}.get(words[1] if len(words) > 1 else "", "train")
    if words[:1] == ["torchrun"] and "oneprune_ext.cli" in words:
        return "train"
    if words[:1] == ["bash"] and words[1].endswith(".sh"):
        return "script"
    return None


@pytest.mark.parametrize("line", readme_blocks.command_lines())
def test_readme_command_is_valid(line: str, capsys) -> None:
    """Each README command names a real make target / script, and its options parse (training
    commands resolve fully: ``--print-config`` builds the whole configuration without running)."""
    from oneprune_ext.cli import eval as evaluation
    from oneprune_ext.cli import plot, train
    from oneprune_ext.cli import profile as overhead

    kind, words = _command_kind(line), shlex.split(line)
    if kind == "make":
        makefile = (readme_blocks.README.parent / "Makefile").read_text()
        assert re.search(rf"^{re.escape(words[1])}:", makefile, flags=re.M), line
    elif kind == "script":
        path = readme_blocks.README.parent / words[1]
        assert path.is_file() and subprocess.run(["bash", "-n", str(path)]).returncode == 0, line
    elif kind == "train":
        args = words[words.index("oneprune_ext.cli") + 1:] if words[0] == "torchrun" else words[1:]
        assert train.main(args + ["--print-config"]) == 0, line
        json.loads(capsys.readouterr().out)
    else:
        parser = {"profile": overhead.build_parser, "eval": evaluation.build_parser}.get(kind)
        if parser is None:
            with pytest.raises(SystemExit) as e:
                plot.main(["--help"])
            assert e.value.code == 0
        else:
            parser().parse_args(words[2:])
