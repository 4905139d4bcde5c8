"""memory_format: the memory order of dense tensors (contiguous, channels_last, permuted)."""

import pytest
import torch

from oneprune_ext.kernels.memory_format import dense_view, inverse_order, is_dense, memory_order


@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (4, 3, 1, 1), (1, 3, 2, 2), (6, 1, 3, 3)])
def test_channels_last_order(shape):
    t = torch.randn(shape)
    assert memory_order(t) == (0, 1, 2, 3)
    cl = t.to(memory_format=torch.channels_last)
    v, order = dense_view(cl)
    assert v.is_contiguous() and v.data_ptr() == cl.data_ptr()
    assert torch.equal(v.permute(inverse_order(order)), t)
    if shape[1] > 1 and shape[2] * shape[3] > 1:
        assert order == (0, 2, 3, 1)


def test_channels_last_3d_and_permutations():
    t = torch.randn(2, 3, 4, 5, 6).to(memory_format=torch.channels_last_3d)
    assert memory_order(t) == (0, 2, 3, 4, 1)
    for perm in [(1, 0, 2), (2, 1, 0), (0, 2, 1)]:
        base = torch.randn(3, 4, 5)
        t = base.permute(perm)
        v, order = dense_view(t)
        assert v.is_contiguous() and torch.equal(v.permute(inverse_order(order)), t)


def test_not_dense_is_refused():
    t = torch.randn(4, 6)[:, ::2]
    assert memory_order(t) is None and not is_dense(t)
    with pytest.raises(ValueError, match="conv.weight.*not dense"):
        dense_view(t, "conv.weight")
    assert not is_dense(torch.randn(3, 1).expand(3, 4))
    assert is_dense(torch.randn(()))
