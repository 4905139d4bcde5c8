"""Detectors torch.fx cannot trace prune exactly: torchvision's R-CNN family and ultralytics' YOLO.

One model per mechanism (small images; the coverage over every torchvision detector and
YOLOv8n / YOLO11n is a benchmark):

* a Faster R-CNN with a ResNet-18 FPN backbone and ``FrozenBatchNorm2d`` (as built from
  pre-trained weights): the image-list transform, the FPN, the RPN head shared over the levels,
  ``MultiScaleRoIAlign`` and the two-layer box head;
* YOLOv8n (ultralytics, from its bundled yaml, no weights): ``C2f`` chunks and concats,
  upsampling, the ``Detect`` head whose ``feats`` output the loss reads for shapes only.

Each prunes a random half of every group, equals the masked dense model, counts MACs exactly
as ``FlopCounterMode`` does on the pruned model, and runs a train-mode backward (real losses
for the R-CNN).
"""

from __future__ import annotations

import warnings

import pytest
import torch

import _detection_cases as dc


def _small_faster_rcnn() -> tuple[torch.nn.Module, tuple]:
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops.misc import FrozenBatchNorm2d

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, norm_layer=FrozenBatchNorm2d,
                                       trainable_layers=5)
    model = FasterRCNN(backbone, num_classes=5, min_size=64, max_size=64, representation_size=128,
                       **dc.RCNN_FIXED_COUNTS)
    dc.randomize_inits(model)
    inputs = ([torch.rand(3, 64, 64)],)
    dc.calm_box_regression(model, inputs)
    return model.eval(), inputs


def test_faster_rcnn_with_frozen_batch_norm() -> None:
    model, inputs = _small_faster_rcnn()
    out = dc.check_model("fasterrcnn", model, inputs)
    groups = {g.name: g for g in out.report.groups}
    assert out.report.capture == "executed forward"
    assert out.error < 1e-5 and out.predicted_macs == out.counted_macs
    # a FrozenBatchNorm2d's buffers go with its conv's channels
    stem = groups["backbone.body.conv1"]
    assert {s.name for s in stem.slices if s.is_buffer} >= {"backbone.body.bn1.weight", "backbone.body.bn1.running_var"}
    # the FPN outputs (all levels: one RPN head convolves them, MultiScaleRoIAlign pools them)
    fpn = next(g for n, g in groups.items() if n.startswith("backbone.fpn.layer_blocks"))
    names = {s.name for s in fpn.slices}
    assert {f"backbone.fpn.layer_blocks.{i}.0.weight" for i in range(4)} <= names
    assert {"rpn.head.conv.0.0.weight", "roi_heads.box_head.fc6.weight"} <= names
    fc6 = next(s for s in fpn.slices if s.name == "roi_heads.box_head.fc6.weight")
    assert fc6.block == 7 * 7  # the pooled 7x7 map of each channel is a block of fc6's columns
    assert "roi_heads.box_head.fc6" in groups and "roi_heads.box_head.fc7" in groups
    # only the predictors' outputs (read as boxes and class scores) are kept
    assert set(out.report.frozen_groups()) == {"rpn.head.cls_logits", "rpn.head.bbox_pred",
                                                "roi_heads.box_predictor.cls_score",
                                                "roi_heads.box_predictor.bbox_pred"}


def test_yolov8n() -> None:
    pytest.importorskip("ultralytics")
    out = dc.check("yolov8n")
    assert out.report.capture == "executed forward"
    assert out.error < 1e-5 and out.predicted_macs == out.counted_macs
    names = {g.name for g in out.report.groups}
    # the neck's outputs, returned as Detect's "feats", stay prunable
    assert {"model.15.cv2.conv", "model.18.cv2.conv", "model.21.cv2.conv"} <= names
    # C2f: cv1's output is chunked in two halves that lose the same positions
    c2f = next(g for g in out.report.groups if g.name == "model.2.cv1.conv[0:16]")
    assert [s.offset for s in c2f.slices if s.name == "model.2.cv1.conv.weight" and s.dim == 0] == [0, 16]
    # kept: the head's output convolutions (literal sizes in its reshapes) and the DFL
    assert all(n.startswith(("model.22.cv2", "model.22.cv3", "model.22.dfl")) for n in out.report.frozen_groups())


def test_readme_detector_snippet(capsys) -> None:
    """The README's detector example runs and prints what its comment says."""
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = text[text.index("### Detectors, YOLO and other models"):]
    start = section.index("```python") + len("```python")
    code = section[start:section.index("```", start)]
    exec(compile(code, "README.md", "exec"), {})
    assert capsys.readouterr().out.splitlines() == ["executed forward True"]


def test_pruner_in_a_detector_training_loop() -> None:
    """OneCyclePruner on a Faster R-CNN trained the torchvision way (train mode, ``model(images,
    targets)`` returning losses); traced in eval mode from the images alone."""
    import oneprune_ext as op

    model, inputs = _small_faster_rcnn()
    model.train()
    config = op.PrunerConfig(total_epochs=3, reduction=0.4, monitor_start=0, sl_start=1, sl_end=1, reg=1e-2)
    with pytest.warns(op.UnsupportedOpWarning, match="roi_heads.box_predictor.cls_score"):
        pruner = op.OneCyclePruner(model, inputs, config)  # the predictors' outputs are kept
    assert all(m.training for m in model.modules())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    targets = dc.train_targets("fasterrcnn", inputs)
    for epoch in range(3):
        pruner.epoch_start(epoch)
        for _ in range(2):
            optimizer.zero_grad()
            loss = sum(model(*inputs, targets).values())
            loss.backward()
            pruner.before_step()
            optimizer.step()
            pruner.after_step(0.01)
        pruner.epoch_end(epoch, optimizer)
    assert pruner.pruned and torch.isfinite(loss)
    assert pruner.macs() == dc.counted_macs(model, inputs) <= 0.6 * pruner.facts.dense_macs + 1
