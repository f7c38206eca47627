"""Hardware is chosen once, at load, explicitly: load_target(cpu_kernels=..., cudnn_sdp=...); the library reads no
environment variable (the CLI does and passes them on); a bound draft takes the target's kernels."""

import pytest
import torch
from torch import nn

from beagle.cli.common import hardware_args
from beagle.errors import BeagleError
from beagle.kernels import cpu_linear
from beagle.kernels.cpu_kernels import install_cpu_kernels, resolve_cpu_kernels
from beagle.kernels.cpu_attention import IMPLEMENTATION
from beagle.models.checkpoint import build_draft
from beagle.target_model.model import TargetModel, load_target
from tests.conftest import make_tiny_target

AVAILABLE = [kernel for kernel in cpu_linear.KERNELS if kernel != "onednn" or cpu_linear.onednn_available()]


def _installed(module: nn.Module) -> list[bool]:
    return [getattr(layer, cpu_linear._INSTALLED, False) for layer in module.modules() if type(layer) is nn.Linear]


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    make_tiny_target("llama").model.save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True)
def restore_kernel():
    before = cpu_linear.current_kernel()
    yield
    cpu_linear.select_kernel(before)


@pytest.mark.parametrize("kernel", AVAILABLE)
def test_load_target_installs_the_chosen_kernels(model_folder, kernel):
    target = load_target(str(model_folder), device="cpu", cpu_kernels=kernel)
    assert cpu_linear.current_kernel() == kernel
    if kernel == "stock":
        assert target.cpu_kernels is None and not any(_installed(target.model))
        assert target.model.config._attn_implementation == "sdpa"
    else:
        assert target.cpu_kernels.linear_kernel == kernel and all(_installed(target.model))
        assert target.model.config._attn_implementation == IMPLEMENTATION
    draft = build_draft(target, "beagle")  # binds: takes the target's kernels
    assert all(_installed(draft)) is (kernel != "stock")
    assert (draft._linear == target.cpu_kernels.linear) if kernel != "stock" else draft._linear is nn.functional.linear


def test_auto_is_the_default(model_folder):
    expected = "onednn" if cpu_linear.onednn_available() else "columns"
    assert resolve_cpu_kernels(None) == resolve_cpu_kernels("auto") == expected
    assert load_target(str(model_folder), device="cpu").cpu_kernels.linear_kernel == expected


def test_a_bad_choice_is_a_one_line_error_before_loading(tmp_path):
    with pytest.raises(BeagleError) as error:
        load_target(str(tmp_path / "absent"), device="cpu", cpu_kernels="fastest")
    message = str(error.value)
    assert "\n" not in message and "'fastest'" in message and "auto, onednn, columns, stock" in message


def test_the_library_reads_no_environment_variable(model_folder, monkeypatch):
    """BEAGLE_CPU_LINEAR / BEAGLE_CUDNN_SDP reach the library only through the CLI's arguments."""
    monkeypatch.setenv("BEAGLE_CPU_LINEAR", "not-a-kernel")
    monkeypatch.setenv("BEAGLE_CUDNN_SDP", "1")
    monkeypatch.setenv("BEAGLE_FAST_ATTENTION", "Grouped")
    target = load_target(str(model_folder), device="cpu", cpu_kernels="stock")  # the bad value is never read
    assert target.cpu_kernels is None and target.fast_attention == "sdpa"
    assert hardware_args(None) == {"cpu_kernels": "not-a-kernel", "cudnn_sdp": True, "fast_attention": "grouped"}
    with pytest.raises(BeagleError, match="unknown CPU kernels 'not-a-kernel'"):
        load_target(str(model_folder), device="cpu", **hardware_args(None))


def test_cli_arguments_win_over_the_environment(monkeypatch):
    class Args:
        cpu_kernels = "stock"
        cudnn_sdp = False
        fast_attention = None

    monkeypatch.setenv("BEAGLE_CPU_LINEAR", "columns")
    monkeypatch.delenv("BEAGLE_CUDNN_SDP", raising=False)
    monkeypatch.delenv("BEAGLE_FAST_ATTENTION", raising=False)
    assert hardware_args(Args()) == {"cpu_kernels": "stock", "cudnn_sdp": False, "fast_attention": "sdpa"}
    monkeypatch.setenv("BEAGLE_FAST_ATTENTION", "grouped")
    assert hardware_args(Args())["fast_attention"] == "grouped"
    Args.fast_attention = "sdpa"
    assert hardware_args(Args())["fast_attention"] == "sdpa"
    Args.cpu_kernels = None
    assert hardware_args(Args())["cpu_kernels"] == "columns"


def test_a_target_built_by_hand_runs_stock_until_kernels_are_installed():
    """TargetModel(...) itself changes no module: the install is an explicit call (load_target makes it)."""
    import transformers

    from tests.conftest import TINY

    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(vocab_size=97, **TINY)).eval()
    target = TargetModel(model)
    assert target.cpu_kernels is None and not any(_installed(target.model))
    draft = build_draft(target, "eagle2")
    assert not any(_installed(draft))
    kernel = AVAILABLE[0]
    install_cpu_kernels(target, kernel)
    assert all(_installed(target.model)) is (kernel != "stock")
    ids = torch.randint(0, 97, (1, 6))
    assert target.forward(ids).shape == (1, 6, TINY["hidden_size"])
