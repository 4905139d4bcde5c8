"""All 80 torchvision classifiers: trace, prune half of every group, exact; Torch-Pruning's group counts.

Run (slow: tens of minutes on a 2-core CPU, several GB of memory for the largest models)::

    .venv/bin/python -m pytest benchmarks/bench_torchvision_coverage.py -q -s

Every model must trace with default settings on CPU at a small input, prune a random half of
every group, equal the masked dense model and count MACs exactly (the checks of
``python_tests/_torchvision_cases.py``; ``make test`` runs one model per family).  Torch-Pruning
(a benchmark-only dependency) counts its groups on the same models; on ResNeXt and RegNet ours
must be within 10 % of its count.  The last test prints the per-family coverage table of the
README.  With ``ONEPRUNE_COVERAGE_JSON=path`` every model's outcome is also appended to ``path``
(one JSON object per line), and ``python benchmarks/bench_torchvision_coverage.py path`` prints
the tables from such a file (e.g. to join runs over parts of the model list).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python_tests"))

import _torchvision_cases as tv  # noqa: E402

_outcomes: dict[str, tv.Outcome] = {}


@pytest.mark.slow
@pytest.mark.parametrize("name", tv.ALL)
def test_model(name: str) -> None:
    try:
        import torch_pruning  # noqa: F401
        with_tp = True
    except ImportError:
        with_tp = False
    out = tv.check(name, with_torch_pruning=with_tp)
    _outcomes[name] = out
    path = os.environ.get("ONEPRUNE_COVERAGE_JSON")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(dataclasses.asdict(out)) + "\n")
    if name in tv.TP_COMPARED and out.tp_groups is not None:
        assert abs(out.groups - out.tp_groups) <= 0.1 * out.tp_groups, (name, out.groups, out.tp_groups)


def _span(values: list[int]) -> str:
    lo, hi = min(values), max(values)
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _why(reason: str) -> str:
    """A frozen place's reason, without the shapes."""
    for key, short in (("splits or mixes the channel dim", "a reshape splits the channel dim"),
                       ("would not follow a prune", "a literal size on the channel dim"),
                       ("size computed from a prunable channel count", "a size read from a channel count")):
        if key in reason:
            return short
    return reason


def coverage_tables(outcomes: dict[str, tv.Outcome]) -> str:
    """The per-family table (README) and the per-model table, as markdown."""
    lines = ["| family | models | groups found | Torch-Pruning groups | kept fixed (why) |",
             "| --- | ---: | ---: | ---: | --- |"]
    for family, names in tv.FAMILIES.items():
        outs = [outcomes[n] for n in names if n in outcomes]
        if not outs:
            continue
        tps = [o.tp_groups for o in outs if o.tp_groups is not None]
        reasons = sorted({_why(r) for o in outs for r in o.reasons})
        frozen = max(len(o.frozen) for o in outs)
        why = "nothing" if not frozen else f"up to {frozen} groups: " + "; ".join(reasons)
        lines.append(f"| {family} | {len(outs)} | {_span([o.groups for o in outs])} | "
                     f"{_span(tps) if tps else 'n/a'} | {why} |")
    lines += ["", "| model | groups | channels | TP groups | frozen groups | dense MACs | MACs after | max rel. error |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name in tv.ALL:
        o = outcomes.get(name)
        if o is not None:
            lines.append(f"| {name} | {o.groups} | {o.channels} | {o.tp_groups if o.tp_groups is not None else 'n/a'} "
                         f"| {len(o.frozen)} | {o.dense_macs} | {o.pruned_macs} | {o.max_error:.1e} |")
    return "\n".join(lines)


@pytest.mark.slow
def test_coverage_table() -> None:
    if not _outcomes:
        pytest.skip("no model ran")
    print("\n" + coverage_tables(_outcomes))


if __name__ == "__main__":
    found: dict[str, tv.Outcome] = {}
    with open(sys.argv[1]) as f:
        for line in f:
            d = json.loads(line)
            found[d["name"]] = tv.Outcome(**d)
    print(coverage_tables(found))
