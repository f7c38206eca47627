"""CPU linear kernels (beagle.kernels.cpu_linear): oneDNN with packed weights, the columns kernel and the stock
one compute nn.functional.linear; routing, packing, installation and the explicit choice."""

import gc

import pytest
import torch
from torch import nn

from beagle.errors import BeagleError
from beagle.kernels import cpu_linear
from beagle.kernels.cpu_linear import (CPU_SMALL_BATCH_ROWS, KERNELS, cpu_linear as linear, install_cpu_linear,
                                      onednn_available, packed_weight, small_batch_rows,
                                      takes_cpu_kernel, uninstall_cpu_linear, use_kernel)
from tests.conftest import make_tiny_target

AVAILABLE = [kernel for kernel in KERNELS if kernel != "onednn" or onednn_available()]


@pytest.mark.parametrize("kernel", AVAILABLE)
@pytest.mark.parametrize("shape", [(1, 1, 48), (1, 2, 48), (3, 48), (1, 5, 48), (2, 4, 48), (1, 9, 48),
                                   (CPU_SMALL_BATCH_ROWS, 48), (1, CPU_SMALL_BATCH_ROWS + 1, 48), (1, 300, 48)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_every_kernel_equals_linear(kernel, shape, with_bias):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=generator)
    weight = torch.randn(80, 48, generator=generator)
    bias = torch.randn(80, generator=generator) if with_bias else None
    with use_kernel(kernel):
        out = linear(x, weight, bias)
    assert out.shape == (*shape[:-1], 80) and out.is_contiguous()
    torch.testing.assert_close(out, nn.functional.linear(x, weight, bias), rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN")
def test_onednn_takes_non_contiguous_input():
    x = torch.randn(48, 3).T  # [3, 48], strided
    weight = torch.randn(16, 48)
    with use_kernel("onednn"):
        torch.testing.assert_close(linear(x, weight), nn.functional.linear(x, weight), rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN")
def test_packed_weight_is_reused_then_repacked_after_an_in_place_change_and_forgotten_with_its_weight():
    weight = torch.randn(16, 8)
    first = packed_weight(weight)
    assert packed_weight(weight) is first  # packed once
    x = torch.randn(2, 8)
    with torch.no_grad():
        weight.mul_(2.0)  # the version counter moves: the next call packs again
    with use_kernel("onednn"):
        torch.testing.assert_close(linear(x, weight), x @ weight.T, rtol=1e-5, atol=1e-4)
    assert packed_weight(weight) is not first
    key = id(weight)
    assert key in cpu_linear._PACKED
    del weight, first
    gc.collect()
    assert key not in cpu_linear._PACKED


def test_routing_rules():
    weight = torch.randn(8, 4)
    assert takes_cpu_kernel(torch.randn(1, 4), weight)
    assert not takes_cpu_kernel(torch.randn(0, 4), weight)
    assert takes_cpu_kernel(torch.randn(2, 4, dtype=torch.bfloat16), weight.bfloat16())  # a bf16 draft
    assert not takes_cpu_kernel(torch.randn(2, 4, dtype=torch.float16), weight.half())
    assert not takes_cpu_kernel(torch.randn(2, 4, dtype=torch.bfloat16), weight)  # mixed dtypes: stock
    trainable = torch.randn(8, 4, requires_grad=True)
    assert not takes_cpu_kernel(torch.randn(2, 4), trainable)  # autograd: stock kernel
    with torch.no_grad():
        assert takes_cpu_kernel(torch.randn(2, 4), trainable)
    assert small_batch_rows(torch.randn(2, 3, 4), weight) == 6
    assert small_batch_rows(torch.randn(CPU_SMALL_BATCH_ROWS + 1, 4), weight) == 0  # columns: prefill is stock


@pytest.mark.parametrize("kernel", AVAILABLE)
def test_bf16_products_match_linear(kernel):
    x = torch.randn(1, 7, 48).bfloat16()
    weight = torch.randn(80, 48).bfloat16()
    with use_kernel(kernel):
        out = linear(x, weight)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), nn.functional.linear(x, weight).float(), rtol=2e-2, atol=2e-1)


@pytest.mark.parametrize("kernel", AVAILABLE)
def test_gradients_unchanged_through_an_installed_layer(kernel):
    with use_kernel(kernel):
        layer = nn.Linear(6, 5)
        reference = nn.Linear(6, 5)
        reference.load_state_dict(layer.state_dict())
        install_cpu_linear(layer)
        x = torch.randn(3, 6)
        layer(x).square().sum().backward()
        reference(x).square().sum().backward()
    torch.testing.assert_close(layer.weight.grad, reference.weight.grad)


@pytest.mark.parametrize("kernel", [kernel for kernel in AVAILABLE if kernel != "stock"])
def test_cpu_target_installs_and_uninstall_restores(kernel):
    with use_kernel(kernel):
        target = make_tiny_target("llama")
        layers = [module for module in target.model.modules() if type(module) is nn.Linear]
        assert layers and all(getattr(module, cpu_linear._INSTALLED, False) for module in layers)
        assert install_cpu_linear(target.model) == len(layers)  # idempotent
        ids = torch.randint(0, target.vocab_size, (1, 12))
        cache = target.new_cache()
        target.forward(ids[:, :8], cache)
        patched = target.logits(target.forward(ids[:, 8:], cache))
        uninstall_cpu_linear(target.model)
    assert not any("forward" in vars(module) for module in layers)
    cache = target.new_cache()
    target.forward(ids[:, :8], cache)
    stock = target.logits(target.forward(ids[:, 8:], cache))
    torch.testing.assert_close(patched, stock, rtol=1e-4, atol=1e-4)


def test_stock_kernel_leaves_layers_alone():
    with use_kernel("stock"):
        target = make_tiny_target("llama")
        assert not any(getattr(module, cpu_linear._INSTALLED, False) for module in target.model.modules())
        assert install_cpu_linear(nn.Linear(2, 2)) == 0


def test_use_kernel_rejects_an_unknown_name_and_restores_the_previous_one():
    before = cpu_linear.current_kernel()
    with pytest.raises(BeagleError, match="unknown CPU linear kernel"):
        with use_kernel("blas"):
            pass
    with use_kernel("stock"):
        assert cpu_linear.current_kernel() == "stock"
    assert cpu_linear.current_kernel() == before


@pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN")
def test_bf16_without_native_support_takes_the_stock_call(monkeypatch):
    monkeypatch.setattr(cpu_linear, "onednn_bf16_supported", lambda: False)
    monkeypatch.setattr(cpu_linear, "packed_weight", lambda weight: pytest.fail("packed a bf16 weight"))
    x, weight = torch.randn(3, 48).bfloat16(), torch.randn(80, 48).bfloat16()
    with use_kernel("onednn"):
        torch.testing.assert_close(linear(x, weight), nn.functional.linear(x, weight))
