"""Channel groups -> the one int64 table the fused kernels read (CPU and CUDA alike).

Every parameter an ``in_norm`` slice names is described once, in its memory order
(contiguous, ``channels_last`` or any dense permutation), as *tiles*: 2-D regions of
``lines`` lines of ``width`` contiguous elements. An element of a tile has up to two
channels: its *line channel* (the tensor's outer channel dimension in memory, e.g. a conv's
output channels) and its *position channel* (the inner one, e.g. its input channels), found
by index arithmetic: ``chan0 + (index // div) % mod``. ``div`` folds a flatten's block or a
conv's kernel size, ``mod`` folds the repeated slices of a grouped convolution, offsets
place concat operands. Tiles are cut into fixed-size *chunks* (at most 1024 positions x 1024
lines, 65536 elements) that the kernels walk row-major, one chunk per work item (CPU) or
block (CUDA); each chunk writes partial sums to its own *slots*, and each channel's result is
combined from its slots in a fixed order (``csrc/layout_index.h`` documents the format).

The table is built with numpy (no per-channel Python loop) and rebuilt in milliseconds after a
prune. It lives on the host; the CUDA kernels use a device copy the extension makes on the
first call on each device. The data pointers are *not* stored: every op call hands the kernels
the live parameters, so re-assigning ``param.data`` (same shape) or casting the model is safe.
Every call checks that the layout still describes the model: a parameter replaced by another
object (``load_state_dict(..., assign=True)``, ``module.weight = nn.Parameter(...)``), moved to
the meta device, reshaped (even to the same number of elements) or given another memory format
raises an error that says to call :meth:`ChannelLayout.rebuild`.

:meth:`ChannelLayout.follow` is the automatic form for code that owns the layout (the pruner
calls it outside the step path): the same parameter objects with their shapes, changed in
place by ``model.to(memory_format=...)``, ``.to(dtype)``, ``.half()``, ``.cuda()`` / ``.cpu()``,
are followed (the table is rebuilt once); a replaced or reshaped parameter is refused, with
:meth:`ChannelLayout.drift` saying which and how.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import nn

from ..graph.groups import ChannelGroups
from .memory_format import memory_order

__all__ = ["ChannelLayout", "LayoutDrift"]

# Table format (csrc/layout_index.h).
_MAGIC, _VERSION, _HEADER = 0x4F4E4550, 1, 8
_MAX_DIMS = 8
_CHUNK_WIDTH, _CHUNK_LINES, _CHUNK_ELEMS = 1024, 1024, 65536
# A one-dim slice whose channels own contiguous runs of at least this many elements is laid
# out one line per index (lines of the run length) rather than as positions of one long line.
_LINE_MIN = 64


@dataclass
class _Run:
    """Indices [start, end) of one tensor dim; index i belongs to channel
    chan0 + ((i - start) // block) % count (chan0 = -1: no channel)."""

    start: int
    end: int
    chan0: int = -1
    block: int = 1
    count: int = 1
    slice_len: int = 0  # elements of one channel in this slice (for the saliency)


def _signature(p: torch.Tensor) -> tuple:
    """What the table depends on (shape, strides of the dims longer than 1) and what the kernels
    are launched for (dtype, device)."""
    strides = tuple(st if n > 1 else 0 for n, st in zip(p.shape, p.stride()))
    return tuple(p.shape), strides, p.dtype, p.device


@dataclass(frozen=True)
class LayoutDrift:
    """How the covered parameters differ from what a :class:`ChannelLayout` was built for.

    Each field lists parameter names. ``replaced``: another object (or nothing) is registered
    under the name now; ``reshaped``: ``(name, built shape, shape now)``; ``reformatted``: the
    same shape in another memory format; ``retyped``: another dtype; ``moved``: another device
    (``meta`` included). The last three are what :meth:`ChannelLayout.follow` follows.
    """

    replaced: tuple[str, ...] = ()
    reshaped: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = ()
    reformatted: tuple[str, ...] = ()
    retyped: tuple[str, ...] = ()
    moved: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.replaced or self.reshaped or self.reformatted or self.retyped or self.moved)

    @property
    def followable(self) -> bool:
        """Only in-place changes of memory format, dtype or device (the same objects and shapes)."""
        return not (self.replaced or self.reshaped)

    def describe(self) -> str:
        """One line per kind of change, naming the first parameter of each."""
        out = []
        if self.replaced:
            out.append(f"parameter '{self.replaced[0]}' (and {len(self.replaced) - 1} more) was replaced by another "
                       "tensor object")
        if self.reshaped:
            n, a, b = self.reshaped[0]
            out.append(f"parameter '{n}' (and {len(self.reshaped) - 1} more) changed shape from {list(a)} to {list(b)}")
        for what, names in (("memory format", self.reformatted), ("dtype", self.retyped), ("device", self.moved)):
            if names:
                out.append(f"parameter '{names[0]}' (and {len(names) - 1} more) changed {what}")
        return "; ".join(out) if out else "nothing changed"


class ChannelLayout:
    """Host-resident description of every prunable channel's weight slices.

    Args:
        model: the model whose parameters the groups name.
        groups: the channel groups (from :func:`oneprune_ext.trace_groups` or built by hand).

    Channels are numbered globally: group ``i``'s channel ``c`` is
    ``group_offsets[i] + c``; per-channel vectors (norms, saliency, masks) use that order.

    Attributes:
        table: the int64 CPU tensor the kernels read (``torch.ops.oneprune.*``'s ``table``).
        tensor_names, numels: the covered parameters' names and element counts, table order.
        num_channels: length of the per-channel vectors.
        device: the parameters' device (follows the model when it moves).
    """

    def __init__(self, model: nn.Module, groups: ChannelGroups) -> None:
        self.model = model
        self.groups = groups
        self.rebuild()

    # ------------------------------------------------------------------ building
    def rebuild(self, groups: Optional[ChannelGroups] = None) -> None:
        """Re-reads the parameters (objects, shapes, memory order) and, if given, new groups,
        and rebuilds the table. Nothing changes if it raises."""
        groups = self.groups if groups is None else groups
        owners = {}
        for mod_name, mod in self.model.named_modules():
            for attr, p in mod._parameters.items():
                if p is not None:
                    owners.setdefault(f"{mod_name}.{attr}" if mod_name else attr, (mod._parameters, attr, p))
        names, slices = self._collect(groups, owners)
        params = [owners[n][2] for n in names]
        offsets = groups.offsets
        tables = _build_tables(groups, names, params, slices, offsets)
        # commit (nothing above mutated self)
        self.groups = groups
        self.tensor_names: list[str] = names
        self._params: list[nn.Parameter] = params
        self._owners = [owners[n] for n in names]
        self.numels: list[int] = [p.numel() for p in params]
        self.device: torch.device = params[0].device if params else torch.device("cpu")
        self.group_offsets: list[int] = offsets
        self.num_channels: int = offsets[-1]
        self.table: torch.Tensor = tables["table"]
        self.num_tiles: int = tables["ntiles"]
        self.num_chunks: int = tables["nchunks"]
        self._placeholders: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
        self._signatures: list[tuple] = [_signature(p) for p in params]

    # ------------------------------------------------------------------ following the model
    def drift(self) -> LayoutDrift:
        """How the model's covered parameters differ from what the table was built for (one
        pass over them; nothing is changed)."""
        replaced, reshaped, reformatted, retyped, moved = [], [], [], [], []
        current = dict(self.model.named_parameters())  # a replaced submodule shows here, not in its old dict
        for name, (pdict, attr, p), sig in zip(self.tensor_names, self._owners, self._signatures):
            if pdict.get(attr) is not p or current.get(name) is not p:
                replaced.append(name)
                continue
            shape, strides, dtype, device = _signature(p)
            if shape != sig[0]:
                reshaped.append((name, sig[0], shape))
                continue
            if strides != sig[1]:
                reformatted.append(name)
            if dtype != sig[2]:
                retyped.append(name)
            if device != sig[3]:
                moved.append(name)
        return LayoutDrift(tuple(replaced), tuple(reshaped), tuple(reformatted), tuple(retyped), tuple(moved))

    def follow(self) -> bool:
        """Follows in-place changes of the covered parameters: the same objects with the same
        shapes in another memory format, dtype or device (``model.to(memory_format=...)``,
        ``model.to(torch.bfloat16)``, ``model.cuda()``): rebuilds the table once and returns
        True. Returns False when nothing changed (one cheap pass, no rebuild).

        Raises:
            ValueError: a parameter was replaced by another object or reshaped (see
                :meth:`drift`), or moved to the meta device; nothing is changed then. Only the
                code that did it knows what the layout should describe now: call
                :meth:`rebuild` (with new groups if the channels changed).
        """
        d = self.drift()
        if not d:
            return False
        if not d.followable:
            raise ValueError(f"the layout cannot follow the model: {d.describe()}; call layout.rebuild() "
                             "(with groups that fit the new shapes)")
        meta = [n for n, p in zip(self.tensor_names, self._params) if p.device.type == "meta"]
        if meta:
            raise ValueError(f"parameter '{meta[0]}' is on the meta device (its data is gone): move the model to a "
                             "real device first")
        self.rebuild()
        return True

    @staticmethod
    def _collect(groups: ChannelGroups, owners: dict) -> tuple[list[str], dict[str, list]]:
        """Validates the groups against the model; returns the covered names (first-use order)
        and each name's in_norm slices as (group index, slice)."""
        names: list[str] = []
        slices: dict[str, list] = {}
        spans: dict[tuple[str, int], list[tuple[int, int, int]]] = {}
        for gi, g in enumerate(groups):
            if g.size < 0:
                raise ValueError(f"group {gi} ({g.name}) has negative size {g.size}")
            for s in g.norm_slices():
                if s.is_buffer or s.name not in owners:
                    raise ValueError(
                        f"group {gi} ({g.name}): '{s.name}' is not a parameter of the model; "
                        "in_norm slices must name parameters (buffers are compacted only)")
                shape = tuple(owners[s.name][2].shape)
                if not 0 <= s.dim < len(shape):
                    raise ValueError(f"group {gi} ({g.name}): dim {s.dim} out of range for '{s.name}' {shape}")
                end = s.offset + g.size * s.block
                if s.offset < 0 or s.block < 1 or end > shape[s.dim]:
                    raise ValueError(
                        f"group {gi} ({g.name}): {g.size} channels x block {s.block} at offset {s.offset} "
                        f"do not fit dim {s.dim} (size {shape[s.dim]}) of '{s.name}'; the groups no longer "
                        "match the model (re-trace, or pass the groups returned by prune_channels)")
                if s.name not in slices:
                    names.append(s.name)
                    slices[s.name] = []
                slices[s.name].append((gi, s))
                spans.setdefault((s.name, s.dim), []).append((s.offset, end, gi))
        for (name, dim), ranges in spans.items():
            ranges.sort()
            for (a0, a1, ga), (b0, b1, gb) in zip(ranges, ranges[1:]):
                if b0 < a1 and b0 < b1 and a0 < a1:
                    raise ValueError(
                        f"groups {ga} and {gb} both claim indices [{b0}, {min(a1, b1)}) of dim {dim} of "
                        f"'{name}'; channel groups must be disjoint")
        for name in names:
            p = owners[name][2]
            dims = {s.dim for _, s in slices[name]}
            if len(dims) > 2:
                raise ValueError(
                    f"'{name}' has channel slices along dims {sorted(dims)}; a tensor may carry "
                    "channels along at most two dims")
            if p.dim() > _MAX_DIMS:
                raise ValueError(f"'{name}' has {p.dim()} dims; the kernels handle at most {_MAX_DIMS}")
            if memory_order(p) is None:
                raise ValueError(
                    f"parameter '{name}' (shape {tuple(p.shape)}, strides {p.stride()}) is not dense in "
                    "memory; make it contiguous (.contiguous() or .to(memory_format=...)) first")
        return names, slices

    # ------------------------------------------------------------------ kernel inputs
    def parameters(self) -> list[nn.Parameter]:
        """The parameters the layout covers, in table order."""
        return list(self._params)

    def check(self) -> None:
        """Raises ValueError if a covered parameter was replaced or moved to the meta device
        since the layout was built (the kernels check shapes and memory order themselves)."""
        self._live(False)

    def tensors(self) -> list[nn.Parameter]:
        """The live parameters for the ``torch.ops.oneprune`` kernels (call them under
        ``torch.no_grad()``), after :meth:`check`."""
        self._live(False)
        return self._params

    def frozen(self) -> list[int]:
        """Table indices of the parameters with ``requires_grad=False`` now (the writing ops
        skip them)."""
        return [i for i, p in enumerate(self._params) if not p.requires_grad]

    def grads(self, frozen: Optional[list[int]] = None) -> list[torch.Tensor]:
        """The ``.grad`` of every covered parameter, in table order; a missing one becomes
        zeros (kept on the parameter). A frozen parameter gets no ``.grad``: its entry is an
        empty placeholder the kernels ignore."""
        skip = set(self.frozen() if frozen is None else frozen)
        out = []
        for i, p in enumerate(self._params):
            if i in skip:
                out.append(self._placeholder(p))
                continue
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            out.append(p.grad)
        return out

    def _live(self, want_grads: bool) -> tuple[list[int], Optional[list[torch.Tensor]], list]:
        """One pass over the covered parameters at every op call: checks that each is still the
        model's, and returns (indices of frozen ones, grads or None, zero grads to attach once
        the op succeeded). Missing grads of writable parameters become zeros that are *not*
        set on the parameters yet, so a refused call changes nothing."""
        frozen: list[int] = []
        grads: Optional[list[torch.Tensor]] = [] if want_grads else None
        pending: list[tuple[nn.Parameter, torch.Tensor]] = []
        for i, (pdict, attr, p) in enumerate(self._owners):
            if pdict.get(attr) is not p:
                raise ValueError(
                    f"parameter '{self.tensor_names[i]}' was replaced by another tensor since the layout "
                    "was built (load_state_dict(..., assign=True), a new nn.Parameter, ...): call "
                    "layout.rebuild()")
            if not p.requires_grad:
                frozen.append(i)
                if grads is not None:
                    grads.append(self._placeholder(p))
            elif grads is not None:
                g = p.grad
                if g is None:
                    g = torch.zeros_like(p)
                    pending.append((p, g))
                grads.append(g)
        if self._params and self._params[0].device != self.device:
            dev = self._params[0].device
            if dev.type == "meta":
                raise ValueError(
                    f"parameter '{self.tensor_names[0]}' is on the meta device (its data is gone): move "
                    "the model to a real device, then call layout.rebuild()")
            self.device = dev
        return frozen, grads, pending

    def fix_grad_layouts(self) -> None:
        """Gives every ``.grad`` whose strides differ from its parameter's the parameter's
        memory format (a copy; values unchanged)."""
        for p in self._params:
            g = p.grad
            if g is not None and g.shape == p.shape and any(
                    s > 1 and a != b for s, a, b in zip(p.shape, g.stride(), p.stride())):
                p.grad = torch.empty_like(p).copy_(g)

    def _placeholder(self, p: torch.Tensor) -> torch.Tensor:
        key = (p.device, p.dtype)
        t = self._placeholders.get(key)
        if t is None:
            t = self._placeholders[key] = torch.empty(0, dtype=p.dtype, device=p.device)
        return t

    # ------------------------------------------------------------------ helpers
    def split(self, per_channel: torch.Tensor) -> list[torch.Tensor]:
        """Splits a per-channel vector into one view per group."""
        return list(torch.split(per_channel, self.groups.sizes))

    def __repr__(self) -> str:
        return (
            f"ChannelLayout({len(self.groups)} groups, {self.num_channels} channels, {len(self._params)} tensors, "
            f"{self.num_tiles} tiles, {self.num_chunks} chunks, device={self.device})"
        )


# ---------------------------------------------------------------------- table building


def _dim_runs(entries: list[tuple[int, int, int, int, int]], size: int) -> list[_Run]:
    """Runs covering [0, size) of one tensor dim from its slices (start, chan0, block, count,
    slice_len), sorted; adjacent slices that continue a run merge (concat operands of
    consecutive channels, and the repeated slices of a grouped conv); gaps get no channel."""
    runs: list[_Run] = []
    pos = 0
    for start, chan0, block, count, slen in sorted(entries):
        if count == 0:
            continue
        end = start + count * block
        if start > pos:
            runs.append(_Run(pos, start))
        last = runs[-1] if runs else None
        if last is not None and last.chan0 >= 0 and last.end == start and last.block == block:
            if last.chan0 == chan0 and last.count == count and last.slice_len == slen:
                last.end = end  # a repeat of the same channels (grouped conv)
                pos = end
                continue
            if (last.end - last.start) == last.count * last.block and chan0 == last.chan0 + last.count \
                    and last.slice_len == slen:
                last.end, last.count = end, last.count + count  # the next channels
                pos = end
                continue
        runs.append(_Run(start, end, chan0, block, count, slen))
        pos = end
    if pos < size:
        runs.append(_Run(pos, size))
    return runs


def _tensor_tiles(p: torch.Tensor, ti: int, slices: list, offsets: list[int], sizes: list[int]) -> list[list[int]]:
    """Tiles of one tensor: [tensor, base, lines, width, stride, lchan0, ldiv, lmod, pchan0, pdiv,
    pmod, line slice_len, pos slice_len] (the last two only for the slots' entries)."""
    shape = tuple(p.shape)
    numel = p.numel()
    order = memory_order(p)
    assert order is not None
    ms = [shape[d] for d in order]
    by_dim: dict[int, list] = {}
    for gi, s in slices:
        slen = numel // shape[s.dim] * s.block if shape[s.dim] else 0
        by_dim.setdefault(s.dim, []).append((s.offset, offsets[gi], s.block, sizes[gi], slen))
    dims = sorted(by_dim, key=order.index)  # outer (in memory) first
    tiles: list[list[int]] = []
    if len(dims) == 1:
        m = order.index(dims[0])
        P, S, K = math.prod(ms[:m]), ms[m], math.prod(ms[m + 1:])
        for r in _dim_runs(by_dim[dims[0]], S):
            if r.chan0 < 0:
                continue
            if P == 1 and K >= _LINE_MIN:  # one line per index: lines of K elements
                tiles.append([ti, r.start * K, r.end - r.start, K, K, r.chan0, r.block, r.count, -1, 1, 1,
                              r.slice_len, 0])
            else:  # P lines; the channel moves along the line
                tiles.append([ti, r.start * K, P, (r.end - r.start) * K, S * K, -1, 1, 1, r.chan0, r.block * K,
                              r.count, 0, r.slice_len])
        return tiles
    m1, m2 = order.index(dims[0]), order.index(dims[1])
    P, R, Q = math.prod(ms[:m1]), ms[m1], math.prod(ms[m1 + 1:m2])
    C, K = ms[m2], math.prod(ms[m2 + 1:])
    rows, cols = _dim_runs(by_dim[dims[0]], R), _dim_runs(by_dim[dims[1]], C)
    for pi in range(P):
        for rr in rows:
            for cr in cols:
                if rr.chan0 < 0 and cr.chan0 < 0:
                    continue
                base = ((pi * R + rr.start) * Q * C + cr.start) * K
                tiles.append([ti, base, (rr.end - rr.start) * Q, (cr.end - cr.start) * K, C * K,
                              rr.chan0, rr.block * Q, rr.count, cr.chan0, cr.block * K, cr.count,
                              rr.slice_len, cr.slice_len])
    return tiles


def _chunks(tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Chunks of every tile (row-major within a tile) and the entries (slot, channel, length)
    of their slots, in slot order."""
    out, entries = [], []
    slot = 0
    for tix, t in enumerate(tiles):
        _, _, lines, width, _, lchan0, ldiv, lmod, pchan0, pdiv, pmod, llen, plen = (int(x) for x in t)
        if lines == 0 or width == 0:
            continue
        nwin = -(-width // _CHUNK_WIDTH)
        wsz = min(_CHUNK_WIDTH, -(-(-(-width // nwin)) // 8) * 8)  # balanced, a multiple of 8 elements
        nl = max(1, min(_CHUNK_LINES, _CHUNK_ELEMS // wsz, lines))
        nlb = -(-lines // nl)
        nl = -(-lines // nlb)  # balanced line blocks
        l0 = np.arange(nlb, dtype=np.int64) * nl
        nlv = np.minimum(nl, lines - l0)
        j0 = np.arange(-(-width // wsz), dtype=np.int64) * wsz
        njv = np.minimum(wsz, width - j0)
        L0, J0 = np.repeat(l0, len(j0)), np.tile(j0, len(l0))
        NL, NJ = np.repeat(nlv, len(j0)), np.tile(njv, len(l0))
        n = len(L0)
        nls = (L0 + NL - 1) // ldiv - L0 // ldiv + 1 if lchan0 >= 0 else np.zeros(n, np.int64)
        nps = (J0 + NJ - 1) // pdiv - J0 // pdiv + 1 if pchan0 >= 0 else np.zeros(n, np.int64)
        cnt = nls + nps
        slot0 = slot + np.concatenate([[0], np.cumsum(cnt)[:-1]]).astype(np.int64)
        out.append(np.stack([np.full(n, tix), L0, NL, J0, NJ, slot0], axis=1))
        # entries: line slots then position slots of every chunk
        if lchan0 >= 0:
            k = np.arange(int(nls.sum())) - np.repeat(np.cumsum(nls) - nls, nls)
            g = np.repeat(L0 // ldiv, nls) + k
            entries.append(np.stack([np.repeat(slot0, nls) + k, lchan0 + g % lmod, np.full(len(k), llen)], axis=1))
        if pchan0 >= 0:
            k = np.arange(int(nps.sum())) - np.repeat(np.cumsum(nps) - nps, nps)
            g = np.repeat(J0 // pdiv, nps) + k
            entries.append(np.stack([np.repeat(slot0 + nls, nps) + k, pchan0 + g % pmod, np.full(len(k), plen)],
                                    axis=1))
        slot += int(cnt.sum())
    chunks = np.concatenate(out).astype(np.int64) if out else np.zeros((0, 6), np.int64)
    ent = np.concatenate(entries).astype(np.int64) if entries else np.zeros((0, 3), np.int64)
    return chunks, ent, slot


def _build_tables(groups: ChannelGroups, names: list[str], params: list[torch.Tensor], slices: dict,
                  offsets: list[int]) -> dict:
    sizes = groups.sizes
    nchan = offsets[-1]
    tiles: list[list[int]] = []
    tens = np.zeros((len(names), 2 + 2 * _MAX_DIMS), np.int64)
    for ti, (name, p) in enumerate(zip(names, params)):
        tens[ti, 0], tens[ti, 1] = p.numel(), p.dim()
        tens[ti, 2:2 + p.dim()] = p.shape
        tens[ti, 2 + _MAX_DIMS:2 + _MAX_DIMS + p.dim()] = p.stride()
        tiles.extend(_tensor_tiles(p, ti, slices[name], offsets, sizes))
    tile_arr = np.asarray(tiles, np.int64).reshape(-1, 13)
    chunks, ent, nslots = _chunks(tile_arr)
    order = np.argsort(ent[:, 1], kind="stable")  # by channel; slot order within a channel
    ent = ent[order]
    cptr = np.zeros(nchan + 1, np.int64)
    cptr[1:] = np.cumsum(np.bincount(ent[:, 1], minlength=nchan)) if len(ent) else 0
    nslices = np.repeat(np.asarray([len(g.norm_slices()) if g.size else 0 for g in groups], np.int64),
                        np.asarray(sizes, np.int64)) if len(groups) else np.zeros(0, np.int64)
    header = np.asarray([_MAGIC, _VERSION, len(names), nchan, len(tile_arr), len(chunks), nslots, len(ent)], np.int64)
    flat = np.concatenate([header, tens.ravel(), tile_arr[:, :11].ravel(), chunks.ravel(), cptr,
                           ent[:, [0, 2]].ravel(), nslices])
    return {"table": torch.from_numpy(flat.copy()), "ntiles": len(tile_arr), "nchunks": len(chunks)}
