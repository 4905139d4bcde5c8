"""Detectors through trace -> cost model -> prune -> masked dense model -> MACs -> backward.

torchvision's detection models and ultralytics' YOLOv8n / YOLO11n: ``torch.fx`` cannot trace any
of them, so these exercise the executed-forward capture (``oneprune_ext.graph.capture``).
Shared by ``python_tests/test_detection.py`` (one model per mechanism) and the benchmarks.

Settings that make the checks meaningful on a randomly initialised detector:

* the two-stage detectors (Faster / Mask / Keypoint R-CNN) keep a fixed number of proposals
  and detections (``rpn_nms_thresh=1.0`` and ``box_nms_thresh=1.0`` suppress nothing, no
  score threshold): their RoI heads' MACs scale with those counts, and the pruned model must
  run the same number of RoIs as the dense one for the MACs to be comparable;
* their box regression layers are scaled so that the random model's box offsets stay small
  (:func:`calm_box_regression`): a random ResNet-50 makes offsets in the tens, its boxes leave
  the image and are dropped as empty, and how many survive would differ between models;
* the one-stage detectors keep every candidate (no score threshold), and are compared on their
  head's outputs (:func:`compared_outputs`).
"""

from __future__ import annotations

import copy
import os
import random
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from oneprune_ext.graph import CostModel, TraceReport, trace_report
from oneprune_ext.pruning import prune_channels

from _pruning_cases import randomize_inits, zero_removed  # noqa: F401  (re-exported for the tests)

os.environ.setdefault("YOLO_OFFLINE", "1")

RCNN_FIXED_COUNTS = dict(rpn_post_nms_top_n_test=50, rpn_nms_thresh=1.0, box_score_thresh=0.0,
                         box_nms_thresh=1.0, box_detections_per_img=4, rpn_post_nms_top_n_train=50,
                         box_batch_size_per_image=32)
_RCNN = RCNN_FIXED_COUNTS
_ONE_STAGE = dict(score_thresh=0.0, topk_candidates=50, detections_per_img=10)

# name -> (torchvision builder name or ultralytics yaml, extra kwargs, image side)
TORCHVISION: dict[str, tuple[dict[str, Any], int]] = {
    "fasterrcnn_resnet50_fpn": (_RCNN, 64),
    "fasterrcnn_resnet50_fpn_v2": (_RCNN, 64),
    "fasterrcnn_mobilenet_v3_large_fpn": (_RCNN, 64),
    "fasterrcnn_mobilenet_v3_large_320_fpn": (_RCNN, 64),
    "maskrcnn_resnet50_fpn": (_RCNN, 64),
    "maskrcnn_resnet50_fpn_v2": (_RCNN, 64),
    "keypointrcnn_resnet50_fpn": (dict(_RCNN, box_detections_per_img=2), 64),
    "retinanet_resnet50_fpn": (_ONE_STAGE, 64),
    "retinanet_resnet50_fpn_v2": (_ONE_STAGE, 64),
    "fcos_resnet50_fpn": (_ONE_STAGE, 64),
    "ssd300_vgg16": (_ONE_STAGE, 300),
    "ssdlite320_mobilenet_v3_large": (_ONE_STAGE, 320),
}
YOLO = {"yolov8n": ("yolov8n.yaml", 64), "yolo11n": ("yolo11n.yaml", 64)}
ALL = list(TORCHVISION) + list(YOLO)


def _image_size_kwargs(name: str, side: int) -> dict[str, Any]:
    if name.startswith(("ssd", "ssdlite")):
        return {}  # fixed-size transform (300 / 320)
    return dict(min_size=side, max_size=side)


def calm_box_regression(model: nn.Module, inputs: tuple, limit: float = 0.5) -> None:
    """Scale the R-CNN box regression layers so their largest output is at most ``limit``."""
    names = [n for n in ("rpn.head.bbox_pred", "roi_heads.box_predictor.bbox_pred") if _has(model, n)]
    for name in names:  # one at a time: the second sees the proposals the first produces
        layer = model.get_submodule(name)
        seen: list[float] = []
        h = layer.register_forward_hook(lambda m, a, out: seen.append(float(out.abs().max())) if out.numel() else None)
        try:
            with torch.no_grad():
                model.eval()(*inputs)
        finally:
            h.remove()
        top = max(seen, default=0.0)
        if top > limit:
            with torch.no_grad():
                layer.weight.mul_(limit / top)
                if layer.bias is not None:
                    layer.bias.mul_(limit / top)


def _has(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
        return True
    except AttributeError:
        return False


def build(name: str, seed: int = 0) -> tuple[nn.Module, tuple]:
    """The model in eval mode (random init, random norm statistics) and its example inputs."""
    torch.manual_seed(seed)
    if name in YOLO:
        from ultralytics.nn.tasks import DetectionModel

        yaml, side = YOLO[name]
        model = DetectionModel(yaml, verbose=False)
        inputs: tuple = (torch.rand(1, 3, side, side),)
    else:
        import torchvision

        kwargs, side = TORCHVISION[name]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = torchvision.models.get_model(name, weights=None, weights_backbone=None, **kwargs,
                                                 **_image_size_kwargs(name, side))
        # two images for SSDlite: its last extra blocks see 1x1 maps, which a train-mode batch
        # norm refuses for a batch of one
        inputs = ([torch.rand(3, side, side) for _ in range(2 if name.startswith("ssdlite") else 1)],)
    randomize_inits(model)
    calm_box_regression(model, inputs)
    return model.eval(), inputs


def train_targets(name: str, inputs: tuple) -> Any:
    """Targets for a train-mode forward of a torchvision detector (two boxes per image)."""
    out = []
    for img in inputs[0]:
        h, w = img.shape[-2:]
        boxes = torch.tensor([[2.0, 3.0, w / 2, h / 2], [w / 4, h / 3, w - 2.0, h - 1.0]])
        t: dict[str, torch.Tensor] = {"boxes": boxes, "labels": torch.tensor([1, 1])}
        if name.startswith("maskrcnn"):
            masks = torch.zeros(2, h, w, dtype=torch.uint8)
            masks[0, 3:h // 2, 2:w // 2] = 1
            masks[1, h // 3:, w // 4:] = 1
            t["masks"] = masks
        if name.startswith("keypointrcnn"):
            kp = torch.rand(2, 17, 3) * torch.tensor([w / 2, h / 2, 1.0]) + torch.tensor([w / 4, h / 3, 1.0])
            t["keypoints"] = kp
        out.append(t)
    return out


def flat(out: Any, path: str = "") -> list[tuple[str, torch.Tensor]]:
    """Every tensor of a nested output, with its path."""
    if isinstance(out, torch.Tensor):
        return [(path, out)]
    if isinstance(out, (list, tuple)):
        return [p for i, v in enumerate(out) for p in flat(v, f"{path}[{i}]")]
    if isinstance(out, dict):
        return [p for k, v in out.items() for p in flat(v, f"{path}.{k}")]
    return []


def output_error(y: Any, y_ref: Any, skip: Callable[[str], bool] = lambda p: False) -> float:
    """Largest difference over the outputs, relative to each tensor's largest magnitude
    (``inf`` on a shape / dtype / integer-value mismatch)."""
    a, b = flat(y), flat(y_ref)
    if [p for p, _ in a] != [p for p, _ in b]:
        return float("inf")
    worst = 0.0
    for (path, u), (_, v) in zip(a, b):
        if skip(path):
            continue
        if u.shape != v.shape or u.dtype != v.dtype:
            return float("inf")
        if not u.is_floating_point():
            if not torch.equal(u, v):
                return float("inf")
            continue
        if u.numel():
            worst = max(worst, float((u - v).abs().max()) / (float(v.abs().max()) + 1e-6))
    return worst


def counted_macs(model: nn.Module, inputs: tuple) -> int:
    """``FlopCounterMode``'s FLOPs / 2 of one eval-mode forward (train / eval flags restored)."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            model(*inputs)
    finally:
        for m, t in flags:
            m.training = t
    return fc.get_total_flops() // 2


def shape_only(name: str) -> Callable[[str], bool]:
    """Output paths compared by shape only: YOLO's ``feats`` (the neck's maps, which the loss
    reads for their shape and which lose channels with the prune)."""
    return (lambda p: ".feats" in p) if name in YOLO else (lambda p: False)


def compared_outputs(name: str, model: nn.Module, inputs: tuple) -> Any:
    """What the masked dense comparison compares: the outputs, except for the one-stage
    torchvision detectors (RetinaNet, FCOS, SSD, SSDlite), whose head outputs (every anchor's
    class logits and box offsets) are compared: their post-processing keeps the top candidates
    among scores that tie on a random model, so two models computing the same scores to 1e-7
    may return different boxes."""
    if not name.startswith(("retinanet", "fcos", "ssd")):
        return model(*inputs)
    seen: list[Any] = []
    h = model.head.register_forward_hook(lambda m, a, out: seen.append(out))
    try:
        model(*inputs)
    finally:
        h.remove()
    return seen[0]


def backward(name: str, model: nn.Module, inputs: tuple) -> None:
    """One train-mode forward and backward (real losses for torchvision detectors)."""
    model.train()
    try:
        if name in YOLO:
            out = model(*inputs)
            loss = sum(t.float().sum() for p, t in flat(out) if ".feats" not in p)
        else:
            losses = model(*inputs, train_targets(name, inputs))
            loss = sum(losses.values())
        loss.backward()
        bad = [n for n, p in model.named_parameters() if p.grad is not None and p.grad.shape != p.shape]
        assert not bad, bad
    finally:
        model.eval()


@dataclass
class Outcome:
    """What one model did."""

    name: str
    report: TraceReport
    dense_macs: int
    predicted_macs: int
    counted_macs: int
    error: float


def check(name: str, seed: int = 0) -> Outcome:
    """Trace, prune a random half of every group; the pruned model equals the masked dense
    model, its MACs equal the cost model's, and a train-mode backward runs."""
    model, inputs = build(name, seed)
    return check_model(name, model, inputs, seed)


def check_model(name: str, model: nn.Module, inputs: tuple, seed: int = 0) -> Outcome:
    """:func:`check` on a model already built (``name``: a key of :data:`YOLO`, or any
    torchvision detector name)."""
    report = trace_report(model, inputs)
    groups = report.groups
    cost = CostModel(model, groups, inputs)
    keep = random_half(groups, seed)
    ref = copy.deepcopy(model)
    zero_removed(ref, groups, keep)
    predicted = cost.macs([len(keep[i]) for i in range(len(groups))])
    prune_channels(model, groups, keep)
    with torch.no_grad():
        err = output_error(compared_outputs(name, model, inputs), compared_outputs(name, ref, inputs), shape_only(name))
    counted = counted_macs(model, inputs)
    backward(name, model, inputs)
    return Outcome(name, report, cost.dense_macs, predicted, counted, err)


def random_half(groups: Any, seed: int) -> dict[int, list[int]]:
    """Keep a random half of every group (at least one channel)."""
    rng = random.Random(seed)
    return {i: sorted(rng.sample(range(g.size), max(1, g.size // 2))) for i, g in enumerate(groups)}
