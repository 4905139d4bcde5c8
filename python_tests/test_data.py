"""Data loaders: the bundled digits set, and the CIFAR-10 missing-folder message."""

from __future__ import annotations

import os

import pytest
import torch

from oneprune_ext.training.data import EpochShuffleSampler, cifar10_loaders, digits_loaders, imagenet_loaders


def _all(loader):
    xs, ys = zip(*list(loader))
    return torch.cat(xs), torch.cat(ys)


def test_digits_shapes_split_and_normalisation():
    train, test = digits_loaders(batch_size=64, val_fraction=0.2, seed=0)
    x_tr, y_tr = _all(train)
    x_te, y_te = _all(test)
    assert x_tr.shape[1:] == (1, 8, 8) and x_tr.dtype == torch.float32 and y_tr.dtype == torch.int64
    assert len(x_tr) + len(x_te) == 1797
    assert len(x_te) == 360  # ceil(0.2 * 1797)
    assert abs(float(x_tr.mean())) < 1e-5 and abs(float(x_tr.std()) - 1.0) < 1e-4
    # stratified: every class in both splits, class proportions within one sample of each other
    c_tr = torch.bincount(y_tr, minlength=10).double()
    c_te = torch.bincount(y_te, minlength=10).double()
    assert (c_te > 0).all()
    assert torch.allclose(c_tr / c_tr.sum() * len(y_te), c_te, atol=1.0)
    assert len(train) == (len(x_tr) + 63) // 64


def test_digits_deterministic_and_seeded():
    a_tr, a_te = digits_loaders(seed=3)
    b_tr, b_te = digits_loaders(seed=3)
    for la, lb in ((a_tr, b_tr), (a_te, b_te)):
        xa, ya = _all(la)
        xb, yb = _all(lb)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    c_te = _all(digits_loaders(seed=4)[1])[1]
    assert not torch.equal(_all(a_te)[1], c_te)


def test_digits_shuffle_is_a_function_of_epoch():
    train, _ = digits_loaders(seed=0)
    train.sampler.set_epoch(5)
    first = _all(train)[1]
    train.sampler.set_epoch(2)
    _all(train)
    train.sampler.set_epoch(5)
    assert torch.equal(_all(train)[1], first)
    # without set_epoch each pass advances: consecutive epochs differ
    s = EpochShuffleSampler(50, seed=1)
    assert list(s) != list(s)
    assert sorted(s) == list(range(50))


def test_digits_upsampled():
    train, test = digits_loaders(batch_size=32, image_size=16)
    x, _ = next(iter(train))
    assert x.shape == (32, 1, 16, 16)
    with pytest.raises(ValueError, match="image_size"):
        digits_loaders(image_size=4)
    with pytest.raises(ValueError, match="val_fraction"):
        digits_loaders(val_fraction=1.0)


def test_cifar_missing_folder_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        cifar10_loaders(tmp_path / "nowhere", batch_size=8, workers=0)
    msg = str(e.value)
    assert "cifar-10-batches-py" in msg and "root" in msg and "Nothing is downloaded" in msg
    assert not os.path.exists(tmp_path / "nowhere")  # no download attempted


def test_imagenet_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="train"):
        imagenet_loaders(tmp_path)


@pytest.mark.parametrize("n, world", [(1437, 2), (50, 3), (7, 4)])
def test_sharded_shuffle_splits_the_single_process_order(n: int, world: int):
    """Rank r takes positions r, r+R, ... of the padded single-process order: the ranks' k-th
    batches of B/R together are the single-process k-th batch of B, every rank has as many."""
    single = list(EpochShuffleSampler(n, seed=2))
    shards = [EpochShuffleSampler(n, seed=2, num_replicas=world, rank=r) for r in range(world)]
    for s in shards:
        s.set_epoch(0)
    lists = [list(s) for s in shards]
    assert all(len(lst) == len(shards[0]) == -(-n // world) for lst in lists)
    merged = [lists[i % world][i // world] for i in range(len(lists[0]) * world)]
    assert merged[:n] == single and set(merged[n:]) <= set(single[: world])  # padding repeats the start
    b = 4  # per-rank batch
    for k in range(len(lists[0]) // b):
        assert sorted(i for lst in lists for i in lst[k * b:(k + 1) * b]) == sorted(merged[k * b * world:(k + 1) * b * world])


def test_sharded_loaders_and_eval_shards_cover_everything_once():
    from oneprune_ext.training.data import ShardSampler

    assert sorted(i for r in range(3) for i in ShardSampler(10, 3, r)) == list(range(10))
    tr0, te0 = digits_loaders(batch_size=64, seed=0, num_replicas=2, rank=0)
    tr1, te1 = digits_loaders(batch_size=64, seed=0, num_replicas=2, rank=1)
    assert tr0.batch_size == 32 and len(tr0) == len(tr1)
    y0, y1 = _all(te0)[1], _all(te1)[1]
    assert len(y0) + len(y1) == 360
    with pytest.raises(ValueError, match="divisible"):
        digits_loaders(batch_size=63, num_replicas=2, rank=0)
    with pytest.raises(ValueError, match="rank"):
        EpochShuffleSampler(10, num_replicas=2, rank=2)
