"""The quant schemas' compose-time checks against the installed libraries: `quant.backend` is checked from a
static table (`_kernels.KERNEL_NAMES`, so that composing a config does not import gptqmodel); the table must
be exactly what the installed gptqmodel accepts, and every name in it must resolve to a kernel."""
from __future__ import annotations

import pytest

from conftest import run_config
from ragqa_exp.errors import ConfigError
from ragqa_exp.quantize._kernels import KERNEL_NAMES, resolve_backend, valid_backend_names

GPTQMODEL_METHODS = sorted(KERNEL_NAMES)


@pytest.mark.parametrize("method", GPTQMODEL_METHODS)
def test_kernel_name_table_is_what_the_installed_gptqmodel_accepts(method):
    pytest.importorskip("gptqmodel")
    table = KERNEL_NAMES[method]
    assert len(set(table)) == len(table), "duplicate names"
    installed = valid_backend_names(method)
    assert sorted(table) == sorted(set(installed)), (
        f"names gptqmodel accepts but the table lacks: {sorted(set(installed) - set(table))}; "
        f"names in the table gptqmodel does not accept: {sorted(set(table) - set(installed))}")


@pytest.mark.parametrize("method", GPTQMODEL_METHODS)
def test_every_accepted_kernel_name_resolves_to_a_kernel_of_the_method(method):
    pytest.importorskip("gptqmodel")
    for name in KERNEL_NAMES[method]:
        kernel, user_given = resolve_backend(method, name)
        assert kernel and user_given == (name != "auto"), name
        assert kernel.value.startswith(f"{method}_"), (name, kernel)


@pytest.mark.parametrize("method,backend", [("gptq", "no_such_kernel"), ("gptq", "awq_torch"), ("awq", "gptq_marlin")])
def test_a_kernel_name_the_method_cannot_run_is_a_one_line_config_error(method, backend):
    with pytest.raises(ConfigError) as e:
        run_config([f"quant={method}", f"quant.backend={backend}"])
    msg = str(e.value)
    assert msg.startswith(f"quant.backend='{backend}' is not allowed") and "\n" not in msg
    assert f"{method}_torch" in msg  # lists what is allowed


def test_kernel_names_are_case_insensitive_at_compose_and_at_load():
    pytest.importorskip("gptqmodel")
    from gptqmodel import BACKEND

    assert run_config(["quant=gptq", "quant.backend=Triton"]).quant.backend == "Triton"
    assert resolve_backend("gptq", "Triton") == (BACKEND.GPTQ_TRITON, True)
    assert resolve_backend("awq", "TORCH") == (BACKEND.AWQ_TORCH, True)
    assert resolve_backend("awq", "triton") == (BACKEND.AWQ_GEMM_TRITON, True)


def test_auto_never_hands_the_kernel_choice_to_gptqmodel():
    """No BACKEND.AUTO (on Hopper it picks Machete, which downloads CUTLASS and fails offline)."""
    pytest.importorskip("gptqmodel")
    from gptqmodel import BACKEND

    assert resolve_backend("gptq", "auto") == (BACKEND.GPTQ_TORCH, False)
    assert resolve_backend("awq", "auto") == (BACKEND.AWQ_TORCH, False)
    for method in GPTQMODEL_METHODS:  # on every device: the kernel that keeps answers batch-invariant on a GPU too
        kernel, _ = resolve_backend(method, "auto")
        assert kernel.value == f"{method}_torch" and kernel is not BACKEND.AUTO and "machete" not in kernel.value


@pytest.mark.parametrize("user_given,hint", [(False, "name another kernel (on a GPU e.g. quant.backend=marlin)"),
                                             (True, "try quant.backend=auto or another kernel")])
def test_a_kernel_that_does_not_load_is_one_line_with_the_way_out(user_given, hint):
    """auto's kernel failing points to naming another; a named one failing points back to auto."""
    from types import SimpleNamespace

    from ragqa_exp.errors import ResourceError
    from ragqa_exp.quantize._kernels import load_quantized

    def broken(*_, **__):
        raise RuntimeError("no kernel\nhere")

    fake = SimpleNamespace(GPTQModel=SimpleNamespace(load=broken))
    with pytest.raises(ResourceError) as ex:
        load_quantized(fake, "/art", SimpleNamespace(value="gptq_torch"), "cpu", None, user_given)
    assert str(ex.value) == ("quant.backend=gptq_torch: the quantized model in /art did not load with it "
                             f"(RuntimeError: no kernel here); {hint}")
