"""quantize._awq_torch: AWQ's torch kernel without gptqmodel's gather computes gptqmodel's numbers bit for bit
(`dequantize_gemm`), for the shapes, group sizes and dtypes AWQ artifacts have. The control: the codes of a word
unpacked in their packed order (gptqmodel's gather left out) must give other numbers, so the comparison can fail.
The loaded AWQ model runs through it: test_quantize.py; its first layer's forward is checked against gptqmodel's
own in every AWQ test session (helpers_quant.reuse_dequantized_weights)."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
packing_utils = pytest.importorskip("gptqmodel.quantization.awq.utils.packing_utils")


def packed(rows: int, out: int, group_size: int, dtype, seed: int):
    g = torch.Generator().manual_seed(seed)
    words = lambda n: torch.randint(-2**31, 2**31 - 1, (n, out // 8), generator=g, dtype=torch.int64).to(torch.int32)
    scales = (torch.rand(rows // group_size, out, generator=g) * 0.02 + 1e-3).to(dtype)
    return words(rows), words(rows // group_size), scales


@pytest.mark.parametrize("rows,out,group_size,dtype", [
    (640, 1024, 128, torch.bfloat16),  # the embedded model's q_proj
    (2048, 640, 128, torch.bfloat16),  # its down_proj
    (256, 96, 32, torch.float16),
    (384, 64, 384, torch.bfloat16),  # one group over all input rows (group_size -1)
])
def test_dequantize_is_gptqmodels_bit_for_bit(rows, out, group_size, dtype):
    from ragqa_exp.quantize import _awq_torch

    qweight, qzeros, scales = packed(rows, out, group_size, dtype, seed=rows + out)
    ref = packing_utils.dequantize_gemm(qweight=qweight, qzeros=qzeros, scales=scales, bits=4, group_size=group_size)
    got = _awq_torch.dequantize(qweight, qzeros, scales, 4, group_size)
    assert got.dtype == ref.dtype == dtype and got.shape == ref.shape == (rows, out)
    assert torch.equal(got, ref)
    packed_order = torch.arange(0, 32, 4, dtype=torch.int32)  # control: gptqmodel's unpack without its reordering
    assert not torch.equal(_awq_torch.dequantize(qweight, qzeros, scales, 4, group_size, shifts=packed_order), ref)


def awq_layer(in_features: int, out_features: int, group_size: int, device: str):
    """An AwqTorchLinear of random 4-bit codes and bf16 scales (in eval mode, as loaded) on `device`."""
    from gptqmodel.nn_modules.qlinear.torch_awq import AwqTorchLinear

    m = AwqTorchLinear(bits=4, group_size=group_size, sym=False, desc_act=False, in_features=in_features,
                       out_features=out_features, bias=False, register_buffers=True)
    qweight, qzeros, scales = packed(in_features, out_features, group_size, torch.bfloat16, seed=in_features)
    m.qweight.copy_(qweight)
    m.qzeros.copy_(qzeros)
    m.scales = scales
    m.post_init()
    return m.eval().to(device)


def runs(layer):
    """The dequantize function a layer's forward (quantize._awq_torch.forward_of) was given."""
    import inspect

    return inspect.getclosurevars(layer.forward).nonlocals["dequant"]


DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the GPU machine; see benchmarks/)")])]


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_dequantize_forwards_gptqmodels_numbers(device):
    """use_for(compiled=True) (the default on CUDA) compiles the dequantize for each weight shape (two here) and runs
    it: every layer's output equals gptqmodel's own forward, bit for bit. The control: a compiled function that gives
    other numbers is caught when it is warmed, and the layers stay on the eager function."""
    from ragqa_exp.quantize import _awq_torch

    layers = [awq_layer(64, 96, 32, device), awq_layer(128, 64, 128, device), awq_layer(64, 96, 32, device)]
    model = torch.nn.Sequential(*layers)
    x = {m: torch.randn(5, m.in_features, generator=torch.Generator().manual_seed(1)).to(device, torch.bfloat16)
         for m in layers}
    with torch.no_grad():
        own = {m: type(m).forward(m, x[m]) for m in layers}
        assert _awq_torch.use_for(model, compiled=True) == "compiled"
        assert all(runs(m) is _awq_torch.compiled_dequantize() for m in layers)
        assert all(torch.equal(m(x[m]), own[m]) for m in layers)
        assert _awq_torch.use_for(model) == ("compiled" if device == "cuda" else "eager")  # the default by device

        real = _awq_torch.compiled_dequantize()
        _awq_torch._compiled["fn"] = lambda *args: real(*args) * 2  # control: a compile that computes other numbers
        try:
            said = _awq_torch.use_for(model, compiled=True)
        finally:
            _awq_torch._compiled["fn"] = real
        assert said.startswith("eager (compiled dequantize differs from eager"), said
        assert all(runs(m) is None for m in layers)  # forward_of's default: the eager `dequantize`
        assert all(torch.equal(m(x[m]), own[m]) for m in layers)


def test_a_dequantize_that_does_not_compile_stays_eager(monkeypatch, caplog):
    """No Triton, no compiler, an Inductor error: the layers keep the eager function (the same numbers), one warning
    says why and the load's quant_extra["dequantize"] carries it. Out of memory is not swallowed."""
    from ragqa_exp.quantize import _awq_torch

    layer = awq_layer(64, 96, 32, "cpu")
    x = torch.randn(2, 64).to(torch.bfloat16)
    with torch.no_grad():
        own = type(layer).forward(layer, x)

    def broken(*args):
        raise RuntimeError("Compiler: cc not found\nmore lines")

    monkeypatch.setitem(_awq_torch._compiled, "fn", broken)
    with caplog.at_level("WARNING"):
        said = _awq_torch.use_for(torch.nn.Sequential(layer), compiled=True)
    assert said == "eager (RuntimeError: Compiler: cc not found)"
    assert "AWQ dequantize stays eager" in caplog.text
    with torch.no_grad():
        assert torch.equal(layer(x), own)

    def out_of_memory(*args):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setitem(_awq_torch._compiled, "fn", out_of_memory)
    with pytest.raises(torch.OutOfMemoryError):
        _awq_torch.use_for(torch.nn.Sequential(layer), compiled=True)
