"""Data loading for the bundled trainer.

* :func:`digits_loaders`: scikit-learn's bundled 8x8 handwritten digits (1797 real images,
  shipped inside scikit-learn, no download), for CPU demos and CI;
* :func:`cifar10_loaders`: CIFAR-10 from an extracted folder (never downloads);
* :func:`imagenet_loaders`: ImageNet-style ``train/`` and ``val/`` class folders.

Under ``torchrun`` pass ``num_replicas`` (the world size) and ``rank``: each process then loads
its shard (:class:`EpochShuffleSampler` shards like ``DistributedSampler``; the test set is split
without padding by :class:`ShardSampler`), and ``batch_size`` is the batch over all processes.

torchvision is imported only inside the CIFAR / ImageNet functions.

:data:`DATASETS` says, per data set name, what a run on it uses by default (its recipe, length,
batch, model, input shape, workers); :func:`loaders` builds the loaders of a data set by name.

Reproducibility: the training loaders shuffle with :class:`EpochShuffleSampler`, whose order
depends only on ``(seed, epoch)``.  Call ``loader.sampler.set_epoch(epoch)`` at the start of
every epoch and a run resumed at any epoch sees exactly the batches an uninterrupted run sees.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler, TensorDataset

from ..pruning.recipes import CIFAR10, IMAGENET, Recipe

__all__ = [
    "DataSet",
    "DATASETS",
    "loaders",
    "num_classes",
    "EpochShuffleSampler",
    "ShardSampler",
    "digits_loaders",
    "cifar10_loaders",
    "imagenet_loaders",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DataSet:
    """What a run on one data set uses by default.

    Attributes:
        name: ``"digits"``, ``"cifar10"`` or ``"imagenet"``.
        recipe: the published recipe its runs follow (digits: CIFAR-10's, scaled to ``epochs``).
        epochs, batch_size: the default run length (epochs) and training batch (samples).
        model: the default network; models: the networks that fit it.
        input_shape: one sample, ``(C, H, W)``.
        workers: DataLoader worker processes.
        classes: number of classes (None: read from the data, ImageNet-style folders).
    """

    name: str
    recipe: Recipe
    epochs: int
    batch_size: int
    model: str
    models: tuple[str, ...]
    input_shape: tuple[int, int, int]
    workers: int
    classes: Optional[int]


DATASETS: dict[str, DataSet] = {
    # the bundled demo data: the CIFAR-10 recipe, its 300-epoch schedule scaled down to 30 epochs
    "digits": DataSet("digits", CIFAR10, epochs=30, batch_size=32, model="digits_cnn", models=("digits_cnn",),
                      input_shape=(1, 8, 8), workers=0, classes=10),
    "cifar10": DataSet("cifar10", CIFAR10, epochs=CIFAR10.epochs, batch_size=CIFAR10.batch_size, model="resnet56",
                       models=("resnet56", "vgg16", "resnet18", "resnet50"), input_shape=(3, 32, 32), workers=4,
                       classes=10),
    "imagenet": DataSet("imagenet", IMAGENET, epochs=IMAGENET.epochs, batch_size=IMAGENET.batch_size,
                        model="resnet50", models=("resnet18", "resnet50"), input_shape=(3, 224, 224), workers=8,
                        classes=None),
}


def loaders(name: str, root: Optional[str | os.PathLike] = None, *, batch_size: int, workers: int = 0,
            seed: int = 0, num_replicas: int = 1, rank: int = 0) -> tuple[DataLoader, DataLoader]:
    """The train / test loaders of data set ``name`` (:data:`DATASETS`); ``root`` for cifar10 / imagenet."""
    shard: dict[str, Any] = {"num_replicas": num_replicas, "rank": rank}
    if name == "digits":
        return digits_loaders(batch_size=batch_size, seed=seed, **shard)
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}: one of {sorted(DATASETS)}")
    if not root:
        raise ValueError(f"--data {name} needs --data-root (nothing is downloaded)")
    make = cifar10_loaders if name == "cifar10" else imagenet_loaders
    return make(root, batch_size=batch_size, workers=workers, seed=seed, **shard)


def num_classes(name: str, train_loader: Any) -> int:
    """Classes of data set ``name`` (read from an ImageNet-style folder's classes)."""
    n = DATASETS[name].classes
    return n if n is not None else len(train_loader.dataset.classes)


class EpochShuffleSampler(Sampler[int]):
    """Random permutation of ``range(n)`` that is a pure function of ``(seed, epoch)``; optionally
    this rank's shard of it, as a ``DistributedSampler`` gives.

    Each iteration uses the current ``epoch`` and then advances it by one, so a plain loop
    gets a fresh order every epoch; ``set_epoch(e)`` (call it at the start of every epoch)
    pins the order to epoch ``e``, which makes resumed runs see the same batches.

    With ``num_replicas = R > 1`` (one per ``torchrun`` process), the permutation is padded
    with its first entries to a multiple of ``R`` and rank ``r`` takes positions ``r, r + R,
    r + 2R, ...``: every rank gets the same number of samples (so the same number of batches;
    DDP needs that), and with a per-rank batch of ``B / R`` the ``R`` ranks' ``k``-th batches
    together are exactly the ``k``-th batch of size ``B`` of the single-process order.

    Args:
        n: dataset size.
        seed: the shuffle's seed.
        num_replicas: number of shards (processes); 1 for a single process.
        rank: this process's shard, in ``[0, num_replicas)``.
    """

    def __init__(self, n: int, seed: int = 0, num_replicas: int = 1, rank: int = 0) -> None:
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"EpochShuffleSampler: need num_replicas >= 1 and 0 <= rank < num_replicas, "
                             f"got num_replicas={num_replicas}, rank={rank}")
        self.n = int(n)
        self.seed = int(seed)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the permutation of this 0-based epoch for the next iteration."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        self.epoch += 1
        if self.num_replicas > 1:
            total = len(self) * self.num_replicas
            perm = (perm * (total // max(self.n, 1) + 1))[:total] if self.n else []
            perm = perm[self.rank::self.num_replicas]
        return iter(perm)

    def __len__(self) -> int:
        return -(-self.n // self.num_replicas)


class ShardSampler(Sampler[int]):
    """Rank ``rank``'s share of ``range(n)`` in order (positions ``rank, rank + R, ...``), without
    padding: for evaluation, where every sample must count once (sum the counts over ranks)."""

    def __init__(self, n: int, num_replicas: int = 1, rank: int = 0) -> None:
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"ShardSampler: need 0 <= rank < num_replicas, got rank={rank}, "
                             f"num_replicas={num_replicas}")
        self.n, self.num_replicas, self.rank = int(n), int(num_replicas), int(rank)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.num_replicas))


def _per_rank_batch(batch_size: int, num_replicas: int) -> int:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if batch_size % num_replicas:
        raise ValueError(f"batch_size ({batch_size}) is the batch over all {num_replicas} processes and must be "
                         "divisible by their number")
    return batch_size // num_replicas


def digits_loaders(
    batch_size: int = 64,
    val_fraction: float = 0.2,
    seed: int = 0,
    image_size: int = 8,
    *,
    test_batch_size: int | None = None,
    num_replicas: int = 1,
    rank: int = 0,
) -> tuple[DataLoader, DataLoader]:
    """Train/test loaders over scikit-learn's bundled digits (10 classes, 1797 images).

    Images are float32 ``[N, 1, image_size, image_size]``, normalised with the **training
    split's** pixel mean and standard deviation (one scalar each, so the train set is
    zero-mean / unit-variance and the test set uses the same transform).  The split is
    stratified by class and deterministic for a given ``seed``.

    Args:
        batch_size: training batch size (samples).
        val_fraction: fraction of the images held out for testing, in ``(0, 1)``.
        seed: seed of the split and of the training shuffle (:class:`EpochShuffleSampler`).
        image_size: side in pixels; 8 is native, larger sizes are bilinear upsamplings
            (applied once, before normalisation).
        test_batch_size: test batch size (default: ``max(batch_size, 256)``).
        num_replicas, rank: under ``torchrun``, the number of processes and this one's rank:
            the loaders yield this rank's shard, ``batch_size / num_replicas`` samples a batch.

    Returns:
        ``(train_loader, test_loader)``; labels are int64 class ids 0..9.  The training
        loader shuffles (call ``train_loader.sampler.set_epoch(epoch)`` for resumable runs),
        the test loader does not; neither drops the last partial batch.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8 (the native digits size), got {image_size}")
    local_batch = _per_rank_batch(batch_size, num_replicas)

    digits = load_digits()
    x = digits.images.astype(np.float32)  # [N, 8, 8], values 0..16
    y = digits.target.astype(np.int64)
    idx_train, idx_test = train_test_split(
        np.arange(len(y)), test_size=val_fraction, random_state=seed, stratify=y
    )
    x_t = torch.from_numpy(x).unsqueeze(1)  # [N, 1, 8, 8]
    if image_size != 8:
        x_t = torch.nn.functional.interpolate(
            x_t, size=(image_size, image_size), mode="bilinear", align_corners=False
        )
    idx_train_t = torch.from_numpy(np.sort(idx_train))
    idx_test_t = torch.from_numpy(np.sort(idx_test))
    x_train, x_test = x_t[idx_train_t], x_t[idx_test_t]
    mean = x_train.mean()
    std = x_train.std().clamp_min(1e-8)
    x_train = ((x_train - mean) / std).contiguous()
    x_test = ((x_test - mean) / std).contiguous()
    y_t = torch.from_numpy(y)
    train_ds = TensorDataset(x_train, y_t[idx_train_t])
    test_ds = TensorDataset(x_test, y_t[idx_test_t])
    train = DataLoader(train_ds, batch_size=local_batch,
                       sampler=EpochShuffleSampler(len(train_ds), seed, num_replicas, rank))
    test = DataLoader(test_ds, batch_size=test_batch_size or max(batch_size, 256),
                      sampler=ShardSampler(len(test_ds), num_replicas, rank))
    return train, test


def _require_torchvision(what: str):
    try:
        import torchvision  # noqa: F401
        from torchvision import datasets, transforms
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"{what} needs torchvision: pip install torchvision") from e
    return datasets, transforms


def _cifar_root(root: str | os.PathLike) -> str:
    """Accept the folder holding ``cifar-10-batches-py`` or that folder itself."""
    root = os.path.expanduser(os.fspath(root))
    if os.path.basename(os.path.normpath(root)) == "cifar-10-batches-py" and os.path.isdir(root):
        return os.path.dirname(os.path.normpath(root))
    if os.path.isdir(os.path.join(root, "cifar-10-batches-py")):
        return root
    raise FileNotFoundError(
        f"CIFAR-10 not found under root={root!r}: expected the extracted folder "
        f"{os.path.join(root, 'cifar-10-batches-py')!r} (data_batch_1..5, test_batch). "
        "Nothing is downloaded: fetch cifar-10-python.tar.gz, extract it, and point `root` at the "
        "folder that contains cifar-10-batches-py."
    )


def cifar10_loaders(
    root: str | os.PathLike,
    batch_size: int = 128,
    workers: int = 2,
    *,
    test_batch_size: int | None = None,
    seed: int = 0,
    num_replicas: int = 1,
    rank: int = 0,
) -> tuple[DataLoader, DataLoader]:
    """CIFAR-10 train/test loaders from an extracted folder (never downloads).

    Training: random crop 32 with 4-pixel zero padding, horizontal flip, normalisation by
    :data:`CIFAR10_MEAN` / :data:`CIFAR10_STD`; test: normalisation only.

    Args:
        root: folder containing ``cifar-10-batches-py`` (or that folder itself).
        batch_size: training batch size; ``test_batch_size`` defaults to ``max(batch_size, 256)``.
        workers: DataLoader worker processes.
        seed: seed of the training shuffle (:class:`EpochShuffleSampler`).
        num_replicas, rank: under ``torchrun``: this rank's shard (``batch_size`` is over all ranks).

    Raises:
        FileNotFoundError: the extracted folder is missing (the message says what to do).
    """
    root = _cifar_root(root)
    datasets, T = _require_torchvision("cifar10_loaders")
    norm = T.Normalize(CIFAR10_MEAN, CIFAR10_STD)
    train_tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    test_tf = T.Compose([T.ToTensor(), norm])
    try:
        train_ds = datasets.CIFAR10(root, train=True, transform=train_tf, download=False)
        test_ds = datasets.CIFAR10(root, train=False, transform=test_tf, download=False)
    except RuntimeError as e:
        raise FileNotFoundError(
            f"CIFAR-10 under {root!r} is incomplete or corrupted (torchvision could not read it); re-extract "
            "cifar-10-python.tar.gz there."
        ) from e
    return _loaders(train_ds, test_ds, batch_size, test_batch_size, workers, seed, num_replicas, rank)


def imagenet_loaders(
    root: str | os.PathLike,
    batch_size: int = 256,
    workers: int = 8,
    *,
    test_batch_size: int | None = None,
    train_crop: int = 224,
    val_resize: int = 256,
    val_crop: int = 224,
    seed: int = 0,
    num_replicas: int = 1,
    rank: int = 0,
) -> tuple[DataLoader, DataLoader]:
    """ImageNet train/val loaders over ``root/train`` and ``root/val`` class folders (ImageFolder).

    Training: RandomResizedCrop(``train_crop``), horizontal flip, normalisation by
    :data:`IMAGENET_MEAN` / :data:`IMAGENET_STD`; validation: resize the short side to
    ``val_resize``, centre crop ``val_crop``, normalisation. ``num_replicas`` / ``rank``: under
    ``torchrun``, this rank's shard (``batch_size`` is over all ranks).

    Raises:
        FileNotFoundError: ``root/train`` or ``root/val`` is missing.
    """
    root = os.path.expanduser(os.fspath(root))
    for split in ("train", "val"):
        if not os.path.isdir(os.path.join(root, split)):
            raise FileNotFoundError(
                f"ImageNet folder {os.path.join(root, split)!r} not found: point `root` at a folder "
                "holding train/ and val/, each with one sub-folder of images per class."
            )
    datasets, T = _require_torchvision("imagenet_loaders")
    norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tf = T.Compose([T.RandomResizedCrop(train_crop), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    val_tf = T.Compose([T.Resize(val_resize), T.CenterCrop(val_crop), T.ToTensor(), norm])
    train_ds = datasets.ImageFolder(os.path.join(root, "train"), transform=train_tf)
    val_ds = datasets.ImageFolder(os.path.join(root, "val"), transform=val_tf)
    return _loaders(train_ds, val_ds, batch_size, test_batch_size, workers, seed, num_replicas, rank)


def _loaders(train_ds, test_ds, batch_size: int, test_batch_size: int | None, workers: int, seed: int,
             num_replicas: int = 1, rank: int = 0):
    pin = torch.cuda.is_available()
    persistent = workers > 0
    train = DataLoader(
        train_ds,
        batch_size=_per_rank_batch(batch_size, num_replicas),
        sampler=EpochShuffleSampler(len(train_ds), seed, num_replicas, rank),
        num_workers=workers,
        pin_memory=pin,
        drop_last=False,
        persistent_workers=persistent,
    )
    test = DataLoader(
        test_ds,
        batch_size=test_batch_size or max(batch_size, 256),
        sampler=ShardSampler(len(test_ds), num_replicas, rank),
        num_workers=workers,
        pin_memory=pin,
        persistent_workers=persistent,
    )
    return train, test
