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
