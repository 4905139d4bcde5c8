"""A call that raises changes nothing (issue 11, items 1, 2, 4 and 5's prune_channels part).

Refused calls are checked to leave every parameter (same object, data, grad), buffer, layer
attribute, optimizer state and the pruner's own state exactly as they were: corrupt or
foreign pruner states, pruned-model files whose weights or structure record do not fit,
prunes of tensors that share memory, bad keep sets, hooks called out of order.
"""

from __future__ import annotations

import copy
import io
import json
from typing import Any

import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oneprune_ext import files, models
from oneprune_ext.pruning.compaction import prune_channels
from oneprune_ext.graph.trace import trace_groups
from oneprune_ext.pruning.pruner import OneCyclePruner
from oneprune_ext.storage.saving import load_pruned, save_pruned

X = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
OPTS = dict(total_epochs=8, monitor_start=1, sl_start=2, sl_end=3)



# tiny models: on a loaded 2-core machine more threads only add contention
pytestmark = pytest.mark.usefixtures("one_thread")


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return models.mlp(64, (16, 12), 10)


def _roundtrip(obj: Any) -> Any:
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _clone(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_clone(v) for v in obj)
    return copy.copy(obj)


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b or (a != a and b != b)


ATTRS = ("in_features", "out_features", "in_channels", "out_channels", "groups", "num_features", "normalized_shape",
         "embed_dim", "kdim", "vdim", "head_dim", "hidden_dim")


def snapshot(model: nn.Module, optimizer=None, pruner=None) -> dict[str, Any]:
    """Everything a refused call must leave as it was."""
    return {
        "params": [(n, id(p), p.detach().clone(), None if p.grad is None else p.grad.clone())
                   for n, p in model.named_parameters()],
        "buffers": {n: b.clone() for n, b in model.named_buffers()},
        "attrs": {(n, a): getattr(m, a) for n, m in model.named_modules() for a in ATTRS if hasattr(m, a)},
        "optimizer": None if optimizer is None else _clone(optimizer.state_dict()),
        "pruner": None if pruner is None else _clone(pruner.state_dict()),
    }


def assert_unchanged(before: dict[str, Any], model: nn.Module, optimizer=None, pruner=None) -> None:
    after = snapshot(model, optimizer, pruner)
    assert [(n, i) for n, i, _, _ in after["params"]] == [(n, i) for n, i, _, _ in before["params"]]
    for (n, _, d0, g0), (_, _, d1, g1) in zip(before["params"], after["params"]):
        assert _equal(d0, d1), f"{n} data changed"
        assert (g0 is None) == (g1 is None) and (g0 is None or _equal(g0, g1)), f"{n} grad changed"
    assert _equal(before["buffers"], after["buffers"])
    assert before["attrs"] == after["attrs"]
    assert _equal(before["optimizer"], after["optimizer"])
    if pruner is not None:
        b, a = before["pruner"], after["pruner"]
        b = {k: v for k, v in b.items() if k != "stats"}
        a = {k: v for k, v in a.items() if k != "stats"}
        assert _equal(b, a)


def _pruned_state() -> dict[str, Any]:
    p = OneCyclePruner(_mlp(), X, **OPTS)
    for e in range(5):
        p.epoch_start(e)
        p.epoch_end(e)
    assert p.pruned
    return _roundtrip(p.state_dict())


@pytest.fixture(scope="module")
def pruned_state() -> dict[str, Any]:
    return _pruned_state()


# ------------------------------------------------------------------------------------ pruner state


def _fresh() -> tuple[nn.Module, OneCyclePruner]:
    model = _mlp(seed=3)
    return model, OneCyclePruner(model, X, **OPTS)


@pytest.mark.parametrize("corrupt", [
    lambda s: s.pop("masks"),
    lambda s: s.pop("stats"),
    lambda s: s.pop("history"),
    lambda s: s["tracker"]["kept_lengths"].pop(),
    lambda s: s["tracker"].update(kept_flat=[t + 100 for t in s["tracker"]["kept_flat"]]),
    lambda s: s["history"][0].pop("kept_counts"),
    lambda s: s["history"][0].update(kept_counts=[1]),
    lambda s: s["masks"].append(torch.zeros(3, dtype=torch.bool)),
    lambda s: s["prune_keep"][0].__setitem__(0, 99),
    lambda s: s["prune_keep"].pop(),
    lambda s: s.update(prune_epoch=None),
    lambda s: s.update(last_end=7, last_start=5),
    lambda s: s["selection"].update(removal_mask=torch.zeros(2, dtype=torch.bool)),
    lambda s: s.update(reg_current=float("nan")),
    lambda s: s["sparsity"].update(shrink_total=-1.0),
    lambda s: s.update(sparsity=[1]),
    lambda s: s.update(version=torch.tensor([5, 3])),  # found by the property test below
    lambda s: s.update(version=True),
    lambda s: s.update(sparsity=torch.tensor([5, 3])),
], ids=["no-masks", "no-stats", "no-history", "tracker-lengths", "tracker-indices", "history-entry", "history-counts",
        "mask-size", "keep-range", "keep-groups", "prune-epoch", "epoch-order", "selection-mask", "reg-nan",
        "shrink-total", "sparsity-list", "version-tensor", "version-bool", "sparsity-tensor"])
def test_corrupt_state_leaves_the_fresh_model_dense(pruned_state, corrupt) -> None:
    state = _clone(pruned_state)
    corrupt(state)
    model, q = _fresh()
    before = snapshot(model, pruner=q)
    with pytest.raises(ValueError, match="corrupt state|does not match|unsupported OneCyclePruner state version"):
        q.load_state_dict(state)
    assert_unchanged(before, model, pruner=q)
    assert not q.pruned and q.groups.sizes == [16, 12]
    q.load_state_dict(pruned_state)  # the intact state still loads into the same pruner
    assert q.pruned


@pytest.mark.parametrize("option, value", [("reduction", 0.4), ("target", "params"), ("total_epochs", 9),
                                           ("sl_end", 4), ("regularizer", "group_lasso"), ("reg", 2e-4)])
def test_state_of_other_options_is_refused_naming_them(pruned_state, option: str, value: Any) -> None:
    model = _mlp(seed=3)
    q = OneCyclePruner(model, X, **{**OPTS, option: value})
    before = snapshot(model, pruner=q)
    with pytest.raises(ValueError, match=rf"other options: {option}=.*\(saved\) vs {value!r} \(this pruner\)"):
        q.load_state_dict(pruned_state)
    assert_unchanged(before, model, pruner=q)


JUNK = st.sampled_from([None, -1, 0, 10**9, 1.5, float("nan"), "x", [], {}, True, torch.tensor([1.0]),
                        torch.tensor([5, 3]), torch.zeros(3, dtype=torch.bool), torch.tensor(2)])


def _paths(obj: Any, prefix: tuple = (), depth: int = 3) -> list[tuple]:
    out = [prefix] if prefix else []
    if depth == 0:
        return out
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,), depth - 1)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, prefix + (i,), depth - 1)
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_damaged_entry_is_refused_or_harmless(pruned_state, data) -> None:
    """Property: delete or replace any entry (3 levels deep): the load raises ValueError and
    changes nothing, or it loads."""
    state = _clone(pruned_state)
    path = data.draw(st.sampled_from(_paths(state)), label="entry")
    parent = state
    for k in path[:-1]:
        parent = parent[k]
    if data.draw(st.booleans(), label="delete") and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(JUNK, label="value")
    model, q = _fresh()
    before = snapshot(model, pruner=q)
    try:
        q.load_state_dict(state)
    except ValueError:
        assert_unchanged(before, model, pruner=q)


def test_hooks_refuse_an_epoch_that_was_not_ended() -> None:
    """A skipped epoch_end(sl_end) would move the forced prune; it is refused instead."""
    model, p = _fresh()
    for e in range(3):
        p.epoch_start(e)
        p.epoch_end(e)
    p.epoch_start(3)  # sl_end: its epoch_end prunes
    before = snapshot(model, pruner=p)
    with pytest.raises(ValueError, match=r"epoch 3 was started but never ended; call pruner.epoch_end\(3"):
        p.epoch_start(4)
    with pytest.raises(ValueError, match="called twice"):
        p.epoch_start(3)
    assert_unchanged(before, model, pruner=p)
    assert p.epoch_end(3).pruned_now and p.prune_epoch == 3
    p.epoch_start(4)


def _assign(model):
    model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()}, assign=True)


def _new_parameter(model):
    model[1].weight = nn.Parameter(model[1].weight.detach().clone())


@pytest.mark.parametrize("replace", [_assign, _new_parameter], ids=["assign", "new-parameter"])
@pytest.mark.parametrize("hook", ["before_step", "after_step", "epoch_end"])
def test_step_hooks_refuse_replaced_parameters(replace, hook: str) -> None:
    """Parameters replaced mid-epoch: the hooks refuse to touch the orphaned tensors."""
    model = _mlp(seed=3)
    p = OneCyclePruner(model, X, **OPTS, regularizer="both")
    for e in range(2):
        p.epoch_start(e)
        p.epoch_end(e)
    p.epoch_start(2)  # sparsity learning: before_step adds the group-lasso gradient, after_step shrinks
    replace(model)
    model(X.flatten(1)).sum().backward()
    before = snapshot(model)
    call = {"before_step": p.before_step, "after_step": lambda: p.after_step(0.1),
            "epoch_end": lambda: p.epoch_end(2)}[hook]
    with pytest.raises(ValueError, match=r"was replaced by another tensor.*Load weights in place"):
        call()
    assert_unchanged(before, model)


# ------------------------------------------------------------------------------------ load_pruned


@pytest.fixture()
def pruned_file(tmp_path) -> tuple[str, dict[str, Any]]:
    return _write_pruned_digits(str(tmp_path / "pruned.pt"))


def _write_pruned_digits(path: str) -> tuple[str, dict[str, Any]]:
    """A digits_cnn with every other channel pruned, written by save_pruned to ``path``, and its contents."""
    torch.manual_seed(0)
    model = models.digits_cnn(width=4)
    groups = trace_groups(model, torch.randn(2, 1, 8, 8))
    prune_channels(model, groups, [list(range(0, g.size, 2)) for g in groups])
    save_pruned(model, path)
    return path, files.read_checked(path, "oneprune_ext.pruned", (2,))


def _rewrite(path: str, data: dict[str, Any], record: dict[str, Any] | None = None, state=None) -> None:
    """Write a file with a valid checksum but altered contents (as a buggy writer would)."""
    payload = {"structure": json.dumps(record) if record is not None else data["structure"],
               "state_dict": state if state is not None else data["state_dict"]}
    files.write_checked(payload, path, "oneprune_ext.pruned", 2)


def _extra_key(d):
    return None, {**d["state_dict"], "fc.extra": torch.zeros(3)}


def _missing_key(d):
    sd = dict(d["state_dict"])
    sd.pop("fc.bias")
    return None, sd


def _record(change):
    def make(d):
        rec = json.loads(d["structure"])
        change(rec)
        return rec, None
    return make


@pytest.mark.parametrize("alter, match", [
    (_extra_key, "list different tensors"),
    (_missing_key, "list different tensors"),
    (_record(lambda r: r["layers"]["stem.0"].update(out_channels=104)), "out_channels=104"),
    (_record(lambda r: r["layers"]["stem.0"].update(out_channels=1)), "out_channels=1"),
    (_record(lambda r: r["layers"]["fc"].update(in_features=7)), "in_features=7"),
    (_record(lambda r: r["layers"]["bn3"].update(num_features=0)), "num_features=0"),
    (_record(lambda r: r["layers"]["stem.0"].update(groups=2)), "groups=2"),
    (_record(lambda r: r["layers"]["stem.0"].update(stride=2)), "no attribute 'stride'"),
    (_record(lambda r: r["tensors"].update({"fc.bias": [99]})), "disagree"),
    (_record(lambda r: r.update(layers=[])), "malformed"),
], ids=["extra-key", "missing-key", "out-104", "out-1", "in-features", "bn-zero", "groups", "unknown-attr",
        "shape", "layers-list"])
def test_load_pruned_refuses_a_file_that_does_not_fit(pruned_file, alter, match: str) -> None:
    path, data = pruned_file
    record, state = alter(data)
    _rewrite(path, data, record, state)
    fresh = models.digits_cnn(width=4)
    before = snapshot(fresh)
    with pytest.raises(ValueError, match=match) as e:
        load_pruned(fresh, path)
    assert "\n" not in str(e.value)
    assert_unchanged(before, fresh)


class _GroupedAttention(nn.Module):
    """A grouped conv (each kept channel counts twice) feeding attention (two heads)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.bn = nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8)
        self.b = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.ln = nn.LayerNorm(8)
        self.att = nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.b(torch.relu(self.bn(self.a(x)))).flatten(2).transpose(1, 2)
        q = self.ln(h)
        return self.fc((h + self.att(q, q, q, need_weights=False)[0]).mean(1))


XG = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(1))


def _grouped_attention(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return _GroupedAttention().eval()


@pytest.mark.parametrize("keep, match", [
    ({0: [0, 4]}, "out of range"),           # 8 conv channels, but a group of 4 (multiplicity 2)
    ({1: [0, 2, 1]}, "not sorted"),
    ({1: [True, False]}, "must be ints"),
    ([[0, 1]], "keep has 1 entries"),
    ([[0, 1], [0], None], "keep has 3 entries"),
    ({0: []}, "empty"),
])
def test_grouped_and_attention_keeps_are_refused(keep, match: str) -> None:
    model = _grouped_attention()
    groups = trace_groups(model, XG)
    assert len(groups) == 2 and groups.sizes[0] == 4  # the conv's 8 channels are 4 per conv group
    before = snapshot(model)
    with pytest.raises(ValueError, match=match):
        prune_channels(model, groups, keep)
    assert_unchanged(before, model)


@pytest.mark.parametrize("layer, attr, value, match", [
    ("b", "groups", 1, "in_channels"),
    ("b", "groups", 4, "groups=4"),
    ("att", "embed_dim", 3, "embed_dim=3"),
    ("att", "head_dim", 1, "head_dim=1"),
    ("att", "kdim", 2, "kdim=2"),
    ("ln", "normalized_shape", [2], "normalized_shape=\\[2\\]"),
    ("ln", "normalized_shape", [2, 2], "does not fit"),
    ("att.out_proj", "in_features", 2, "in_features=2"),
])
def test_registry_record_that_lies_is_refused(tmp_path, layer: str, attr: str, value: Any, match: str) -> None:
    """The structure record of layers the registry knows (grouped convs, attention, layer norms)
    is checked against the weights' shapes; a lie changes nothing."""
    model = _grouped_attention()
    groups = trace_groups(model, XG)
    prune_channels(model, groups, [[0, 2], [1, 2, 3]])
    path = str(tmp_path / "p.pt")
    save_pruned(model, path)
    fresh = _grouped_attention(seed=1)
    assert torch.allclose(load_pruned(fresh, path)(XG), model(XG))  # the honest file loads
    data = files.read_checked(path, "oneprune_ext.pruned", (2,))
    rec = json.loads(data["structure"])
    rec["layers"][layer][attr] = value
    _rewrite(path, data, rec)
    fresh = _grouped_attention(seed=1)
    before = snapshot(fresh)
    with pytest.raises(ValueError, match=match):
        load_pruned(fresh, path)
    assert_unchanged(before, fresh)


_SAVED: dict[str, Any] = {}


def _saved_pruned_digits(tmp_dir) -> tuple[str, dict[str, Any]]:
    """A pruned digits_cnn written by save_pruned (once), and its contents."""
    if not _SAVED:
        path, data = _write_pruned_digits(str(tmp_dir / "p.pt"))
        _SAVED.update(path=path, data=data)
    return _SAVED["path"], _SAVED["data"]


@settings(max_examples=25, deadline=None)
@given(layer=st.sampled_from(["stem.0", "stem.3", "block.conv1", "conv3", "fc", "bn3", "stem.1"]),
       delta=st.integers(-3, 3).filter(lambda d: d != 0))
def test_any_wrong_layer_count_is_refused(tmp_path_factory, layer: str, delta: int) -> None:
    path, data = _saved_pruned_digits(tmp_path_factory.getbasetemp())
    rec = json.loads(data["structure"])
    attr = next(a for a in ("out_channels", "out_features", "num_features") if a in rec["layers"][layer])
    rec["layers"][layer][attr] += delta
    bad = str(tmp_path_factory.getbasetemp() / "bad.pt")
    _rewrite(bad, data, rec)
    fresh = models.digits_cnn(width=4)
    before = snapshot(fresh)
    with pytest.raises(ValueError):
        load_pruned(fresh, bad)
    assert_unchanged(before, fresh)
    load_pruned(fresh, path)  # the intact file loads into the same model


# ------------------------------------------------------------------------------------ prune_channels


_GROUPS: dict[int, Any] = {}  # traced once: the groups are plain data, the same for every fresh model


def _trained(seed: int = 0):
    torch.manual_seed(seed)
    model = models.digits_cnn(width=4)
    x = torch.randn(4, 1, 8, 8)
    if seed not in _GROUPS:
        _GROUPS[seed] = trace_groups(model, x)
    groups = _GROUPS[seed]
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(x).sum().backward()
    opt.step()
    return model, groups, opt


def _alias_params(model, opt):
    model.stem[1].bias.data = model.stem[1].weight.data  # two parameters on one storage


def _alias_buffer(model, opt):
    model.bn3.running_mean = model.bn3.weight.data[:]


def _alias_state(model, opt):
    opt.state[model.block.conv1.weight]["momentum_buffer"] = opt.state[model.stem[3].weight]["momentum_buffer"]


def _flat(model, opt):
    flat = torch.cat([p.detach().reshape(-1) for p in model.stem.parameters()])
    off = 0
    for p in model.stem.parameters():
        p.data = flat[off:off + p.numel()].view_as(p)
        off += p.numel()


@pytest.mark.parametrize("alias, match", [
    (_alias_params, "'stem.1.weight' and 'stem.1.bias' share memory"),
    (_alias_buffer, "bn3.weight' and buffer 'bn3.running_mean' share memory"),
    (_alias_state, "'momentum_buffer' of 'stem.3.weight' and optimizer state 'momentum_buffer' of 'block.conv1"),
    (_flat, "'stem.0.weight' and 'stem.1.weight' share memory"),
], ids=["params", "buffer", "optimizer-state", "flat-buffer"])
def test_prune_refuses_shared_memory_and_keeps_grads(alias, match: str) -> None:
    model, groups, opt = _trained()
    alias(model, opt)
    before = snapshot(model, opt)
    assert all(g is not None for _, _, _, g in before["params"])
    with pytest.raises(ValueError, match=match):
        prune_channels(model, groups, [list(range(0, g.size, 2)) for g in groups], opt)
    assert_unchanged(before, model, opt)


GOOD_KEEP = st.one_of(
    st.none(),
    st.lists(st.integers(0, 3), min_size=1, max_size=4, unique=True).map(sorted),
    st.lists(st.integers(0, 3), min_size=1, max_size=4, unique=True).map(lambda v: torch.tensor(sorted(v))),
)
BAD_KEEP = st.one_of(
    st.lists(st.integers(-2, 9), max_size=9),
    st.lists(st.booleans(), min_size=1, max_size=4),
    st.lists(st.floats(0, 4, allow_nan=False), min_size=1, max_size=3),
    st.sampled_from([torch.tensor([0.0, 1.0]), torch.tensor([True, False]), torch.tensor([[0, 1]]), 3, "01"]),
)
KEEP_ENTRY = st.one_of(GOOD_KEEP, GOOD_KEEP, GOOD_KEEP, BAD_KEEP)


@settings(max_examples=60, deadline=None)
@given(entries=st.lists(KEEP_ENTRY, min_size=4, max_size=4), as_dict=st.booleans())
def test_any_keep_prunes_like_its_dict_form_or_changes_nothing(entries, as_dict: bool) -> None:
    """Property over keep sets: a list indexed by group prunes exactly as the equivalent dict;
    a bad keep (any entry) raises ValueError and changes nothing."""
    model, groups, opt = _trained()
    keep: Any = {i: k for i, k in enumerate(entries) if k is not None} if as_dict else entries
    before = snapshot(model, opt)
    try:
        new = prune_channels(model, groups, keep, opt)
    except ValueError:
        assert_unchanged(before, model, opt)
        return
    ref, ref_groups, ref_opt = _trained()
    ref_new = prune_channels(ref, ref_groups, {i: k for i, k in enumerate(entries) if k is not None}, ref_opt)
    assert new.sizes == ref_new.sizes
    assert _equal(model.state_dict(), ref.state_dict())
    assert _equal(opt.state_dict()["state"], ref_opt.state_dict()["state"])


def test_keep_as_a_selection_list() -> None:
    model, groups, opt = _trained()
    before = snapshot(model, opt)
    for nothing in ({}, [None] * len(groups), [list(range(g.size)) for g in groups]):
        assert prune_channels(model, groups, nothing, opt).sizes == groups.sizes
        assert_unchanged(before, model, opt)
    keep = [torch.arange(0, g.size, 2) for g in groups]
    keep[1] = None  # keep group 1 whole
    new = prune_channels(model, groups, keep, opt)
    assert new.sizes == [(g.size + 1) // 2 if i != 1 else g.size for i, g in enumerate(groups)]
    with pytest.raises(ValueError, match="has 2 entries, the model has 4 groups"):
        prune_channels(model, new, [[0], [0]])


def test_corrupt_auto_regularizer_state_is_refused() -> None:
    opts = dict(OPTS, reg="auto")
    p = OneCyclePruner(_mlp(), X, **opts)
    for e in range(3):
        p.epoch_start(e)
        p.epoch_end(e)
    state = _roundtrip(p.state_dict())
    assert state["sparsity"]["auto"] is not None
    for bad in ({"left": -1}, {"applied": float("inf")}, {"per_step": "x"}):
        broken = _clone(state)
        broken["sparsity"]["auto"].update(bad)
        model = _mlp(seed=3)
        q = OneCyclePruner(model, X, **opts)
        before = snapshot(model, pruner=q)
        with pytest.raises(ValueError, match="corrupt state: sparsity.auto"):
            q.load_state_dict(broken)
        assert_unchanged(before, model, pruner=q)
        q.load_state_dict(state)
        assert q.state_dict()["sparsity"] == state["sparsity"]
