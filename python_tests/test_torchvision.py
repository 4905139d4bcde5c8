"""Every torchvision classification family traces, prunes half of every group exactly (issue 10).

One model per family (the smallest) runs here; ``benchmarks/bench_torchvision_coverage.py``
runs all 80 models (``make bench``).  Each must trace with default settings on CPU at a small
input, prune a random half of every group, equal the masked dense model and count MACs
exactly as ``torch.utils.flop_counter`` does.
"""

from __future__ import annotations

import pytest

import _torchvision_cases as tv

# what each family's smallest model keeps fixed, checked so the README's table stays true
FROZEN = {"ShuffleNet-V2", "Swin-V2", "MaxViT"}


def _streams(out: tv.Outcome) -> None:
    """Family-specific groups: residual streams as one group, grouped convs, heads."""
    sizes = out.sizes
    if out.name == "vit_b_32":  # one residual stream for the whole network (12 heads) + 12 MLPs
        assert out.groups == 13 and sizes["conv_proj"] == 768 // 12
    elif out.name == "swin_t":  # one stream per stage, the same positions in each of 3 heads
        assert sizes["features.0.0"] == 96 // 3 and sizes["features.2.reduction"] == 192 // 6
    elif out.name == "convnext_tiny":  # stem / downsampling conv + its stage's blocks
        assert {"features.0.0", "features.2.1", "features.4.1", "features.6.1"} <= set(sizes)
        assert out.groups == 4 + 18
    elif out.name == "efficientnet_b0":  # stage outputs joined by the residual adds
        assert "features.2.1.block.3.0" not in sizes and "features.2.0.block.3.0" in sizes
    elif out.name == "resnext50_32x4d":  # 32 conv groups of 4 channels in stage 1
        assert out.groups == 37 and sizes["layer1.0.conv1"] == 4
    elif out.name == "regnet_y_400mf":  # grouped convs of 8-wide groups, SE gates
        assert out.groups == 53 and sizes["trunk_output.block1.block1-0.f.a.0"] == 8


@pytest.mark.parametrize("family", list(tv.DEFAULT))
def test_family(family: str) -> None:
    out = tv.check(tv.DEFAULT[family])
    assert bool(out.frozen) == (family in FROZEN), (family, out.frozen)
    _streams(out)


def test_readme_coverage_snippet(capsys) -> None:
    """The README's trace_report example runs and prints what its comments say."""
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = text[text.index("## Which models prune"):]
    start = section.index("```python") + len("```python")
    code = section[start:section.index("```", start)]
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("Tensor.view at node 'view' in 'stage2.0'") and "kept fixed: stage2.0.branch1.2" in out[0]
    assert out[1] == "18 1912"
