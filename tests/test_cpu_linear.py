"""The small-batch CPU linear (beagle.target.cpu_linear): same products as nn.functional.linear, routed
only where it applies, installed on CPU targets and drafts, and switchable off."""

import pytest
import torch
from torch import nn

from beagle.target import cpu_linear
from beagle.target.cpu_linear import (CPU_SMALL_BATCH_ROWS, install_small_batch_linear, small_batch_linear,
                                      small_batch_rows, uninstall_small_batch_linear)
from tests.conftest import make_tiny_target


@pytest.mark.parametrize("shape", [(1, 1, 48), (1, 2, 48), (3, 48), (1, 5, 48), (2, 4, 48), (CPU_SMALL_BATCH_ROWS, 48),
                                   (1, CPU_SMALL_BATCH_ROWS + 1, 48)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_small_batch_linear_equals_linear(shape, with_bias):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=generator)
    weight = torch.randn(80, 48, generator=generator)
    bias = torch.randn(80, generator=generator) if with_bias else None
    out = small_batch_linear(x, weight, bias)
    assert out.shape == (*shape[:-1], 80) and out.is_contiguous()
    torch.testing.assert_close(out, nn.functional.linear(x, weight, bias), rtol=1e-5, atol=1e-5)


def test_routing_rules():
    weight = torch.randn(8, 4)
    assert small_batch_rows(torch.randn(1, 4), weight) == 1
    assert small_batch_rows(torch.randn(2, 3, 4), weight) == 6
    assert small_batch_rows(torch.randn(CPU_SMALL_BATCH_ROWS + 1, 4), weight) == 0  # prefill: stock kernel
    assert small_batch_rows(torch.randn(0, 4), weight) == 0
    assert small_batch_rows(torch.randn(2, 4, dtype=torch.bfloat16), weight.bfloat16()) == 0  # fp32 only
    trainable = torch.randn(8, 4, requires_grad=True)
    assert small_batch_rows(torch.randn(2, 4), trainable) == 0  # autograd: stock kernel
    with torch.no_grad():
        assert small_batch_rows(torch.randn(2, 4), trainable) == 2


def test_gradients_unchanged_through_an_installed_layer():
    layer = nn.Linear(6, 5)
    reference = nn.Linear(6, 5)
    reference.load_state_dict(layer.state_dict())
    assert install_small_batch_linear(layer) == 1
    x = torch.randn(3, 6)
    layer(x).square().sum().backward()
    reference(x).square().sum().backward()
    torch.testing.assert_close(layer.weight.grad, reference.weight.grad)


def test_cpu_target_installs_and_uninstall_restores():
    target = make_tiny_target("llama")
    layers = [module for module in target.model.modules() if type(module) is nn.Linear]
    assert layers and all(getattr(module, cpu_linear._INSTALLED, False) for module in layers)
    assert install_small_batch_linear(target.model) == len(layers)  # idempotent
    ids = torch.randint(0, target.vocab_size, (1, 12))
    cache = target.new_cache()
    target.forward(ids[:, :8], cache)
    patched = target.logits(target.forward(ids[:, 8:], cache))  # 4 rows: the W @ xᵀ route
    uninstall_small_batch_linear(target.model)
    assert not any("forward" in vars(module) for module in layers)
    cache = target.new_cache()
    target.forward(ids[:, :8], cache)
    stock = target.logits(target.forward(ids[:, 8:], cache))
    torch.testing.assert_close(patched, stock, rtol=1e-4, atol=1e-4)


def test_environment_switch_keeps_stock_forward(monkeypatch):
    monkeypatch.setenv(cpu_linear.ENV, "0")
    target = make_tiny_target("llama")
    assert not any(getattr(module, cpu_linear._INSTALLED, False) for module in target.model.modules())
    assert install_small_batch_linear(nn.Linear(2, 2)) == 0
