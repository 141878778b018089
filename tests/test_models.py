"""Every registered architecture builds for small and MNIST-sized inputs and has exact gradients."""

from __future__ import annotations

import pytest
import torch

from reprolab import registry
from reprolab.models._base import ModelSpec, build_model

ARCHS = registry.model_names()


def spec(arch: str, shape: tuple[int, ...], n_out: int = 10) -> ModelSpec:
    c = shape[0]
    return ModelSpec(
        arch=arch, options={}, input_shape=shape, n_outputs=n_out, mean=[0.5] * c, std=[0.25] * c
    )


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_forward_shapes(arch: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = build_model(spec(arch, shape)).eval()
    assert model(torch.rand(2, *shape) * 16).shape == (2, 10)


@pytest.mark.parametrize("arch", ARCHS)
def test_gradcheck_in_float64(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(spec(arch, (1, 8, 8), n_out=3)).double().eval()  # eval: dropout off
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(model, (x,), eps=1e-6, atol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_same_seed_same_weights(arch: str) -> None:
    torch.manual_seed(3)
    a = build_model(spec(arch, (1, 8, 8))).state_dict()
    torch.manual_seed(3)
    b = build_model(spec(arch, (1, 8, 8))).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
