"""AWQ's torch kernel (gptqmodel 7.6's `AwqTorchLinear`, `quant.backend=auto` for AWQ) without its gather.

At every forward that kernel dequantizes the layer with `packing_utils.dequantize_gemm`: it unpacks the 4-bit
codes in their packed order, then puts them in order with a gather whose index is built from a Python list
(`AWQ_REVERSE_ORDER`): a host-to-device copy per layer per step, which a CUDA graph cannot capture, and
a full int32 copy of the weight, then the zero points and scales repeated to the weight's size. On an H100 at
7B shapes its eval took 2.52x bf16's time (benchmarks/H200_BATCH_PLAN.md, fifth follow-up).

`dequantize` computes the same numbers bit for bit (the same integer codes, the same `(q - z) * s` in the same
dtype) with the order folded into the shifts that unpack each word and the zero points and scales broadcast over
their group: no gather, no host copy (the shifts are made once per device), no repeated tensors. 4-bit only;
other widths go to gptqmodel's own function. `use_for(model)` runs every AwqTorchLinear of a loaded model
through it; the tests check it against gptqmodel's, bit for bit, with a control.

On CUDA `use_for` runs `dequantize` through torch.compile (one fused Triton kernel per weight shape instead of the
eager unpack, subtract and scale passes; an H100 at 7B shapes, 980 prompts: AWQ's eval 58.07 -> 36.00 s with the
same token ids, benchmarks/H200_PROFILE.md). The compiled kernel computes the same numbers: integer unpacking, then
one multiply of small exact integers by the bf16/fp16 scales, rounded to their dtype as eager rounds it (Inductor's
`emulate_precision_casts` is on for it all the same). It is compiled at load, once per weight shape, and checked
there against the eager function bit for bit; a compile that fails or differs leaves the eager function in place
(`LoadedModel.extra["dequantize"]` says which runs), and the eval's seconds do not hold the compile. On a CPU it
stays eager.
"""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)

_shifts: dict = {}  # device -> the int32 shifts that unpack one word's codes in order
_compiled: dict = {}  # "fn" -> `dequantize` through torch.compile (made once per process)


def order_shifts(device):
    """The shifts that unpack a word's 8 codes in order: gptqmodel's AWQ_REVERSE_ORDER (the packed position of
    each code) times 4 bits, made once per device."""
    import torch

    if device not in _shifts:
        from gptqmodel.quantization.awq.utils.packing_utils import AWQ_REVERSE_ORDER

        _shifts[device] = torch.tensor([4 * p for p in AWQ_REVERSE_ORDER], dtype=torch.int32, device=device)
    return _shifts[device]


def dequantize(qweight, qzeros, scales, bits: int, group_size: int, shifts=None):
    """gptqmodel's `dequantize_gemm(qweight, qzeros, scales, bits, group_size)`, bit for bit: the (in, out) weight
    in the scales' dtype. `shifts`: the order of a word's codes (default: AWQ's; the tests pass another as a
    control)."""
    if bits != 4:
        from gptqmodel.quantization.awq.utils.packing_utils import dequantize_gemm

        return dequantize_gemm(qweight=qweight, qzeros=qzeros, scales=scales, bits=bits, group_size=group_size)
    shifts = order_shifts(qweight.device) if shifts is None else shifts
    rows, groups, out = qweight.shape[0], scales.shape[0], scales.shape[-1]
    w = ((qweight[:, :, None] >> shifts) & 15).reshape(rows, -1)[:, :out]
    z = ((qzeros[:, :, None] >> shifts) & 15).reshape(groups, -1)[:, :out]
    return ((w.reshape(groups, rows // groups, out) - z[:, None, :]) * scales[:, None, :]).reshape(rows, out)


def compiled_dequantize():
    """`dequantize` through torch.compile (static shapes: one kernel per weight shape), made once per process."""
    import torch

    if "fn" not in _compiled:
        _compiled["fn"] = torch.compile(dequantize, dynamic=False, options={"emulate_precision_casts": True})
    return _compiled["fn"]


def forward_of(m, keep: dict | None = None, dequant=None):
    """AwqTorchLinear.forward (gptqmodel 7.6) of layer `m` on `dequant` (None: the eager `dequantize`). `keep`: a dict
    to keep the dequantized weight in, per (dtype, device) (the tests' speed-up on a CPU; never the product's: the
    weights stay 4-bit)."""
    import torch

    def forward(x: torch.Tensor) -> torch.Tensor:
        if m.training or m.adapter:
            return type(m).forward(m, x)
        input_dtype = x.dtype
        compute_dtype = input_dtype if input_dtype in (torch.float16, torch.bfloat16) else torch.float16
        x_flat = x.reshape(-1, x.shape[-1])
        if x_flat.dtype != compute_dtype:
            x_flat = x_flat.to(dtype=compute_dtype)
        elif not x_flat.is_contiguous():
            x_flat = x_flat.contiguous()
        weight = None if keep is None else keep.get((compute_dtype, x.device))
        if weight is None:
            m._ensure_runtime_dtype(device=x.device, dtype=compute_dtype)
            weight = (dequant or dequantize)(m.qweight, m.qzeros, m.scales, m.bits, m.group_size)
            weight = weight.to(device=x.device, dtype=compute_dtype).contiguous()
            if keep is not None:
                keep[(compute_dtype, x.device)] = weight
        out = torch.matmul(x_flat, weight)
        if m.bias is not None:
            out = out + m.bias
        return out.to(dtype=input_dtype).reshape(x.shape[:-1] + (m.out_features,))

    return forward


def warm_compiled(layers, dtype) -> str | None:
    """Compile `compiled_dequantize` for every weight shape of `layers` (AwqTorchLinear), with their scales in
    `dtype` (the compute dtype the forward casts them to), each checked bit for bit against the eager `dequantize`;
    None if it ran, else why not (the caller then keeps the eager function)."""
    import torch

    fn, seen = compiled_dequantize(), set()
    try:
        for m in layers:
            m._ensure_runtime_dtype(device=m.qweight.device, dtype=dtype)  # what the first forward would do
            key = (tuple(m.qweight.shape), tuple(m.scales.shape), m.scales.dtype, m.bits, m.group_size)
            if key in seen:
                continue
            seen.add(key)
            with torch.no_grad():
                got = fn(m.qweight, m.qzeros, m.scales, m.bits, m.group_size)
                if not torch.equal(got, dequantize(m.qweight, m.qzeros, m.scales, m.bits, m.group_size)):
                    return f"compiled dequantize differs from eager for weight shape {key[0]}"
    except torch.OutOfMemoryError:
        raise
    except Exception as e:  # no Triton, no compiler, an Inductor error: the eager function, the same numbers
        return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    return None


def use_for(model, compiled: bool | None = None) -> str | None:
    """Every AwqTorchLinear of `model` forwards through `dequantize`, compiled (`compiled`; default: on CUDA) when
    that compiles and matches eager bit for bit. Returns None without such layers, else what dequantizes:
    "compiled" or "eager" (with why, when a compile was wanted and did not run)."""
    import torch

    try:
        from gptqmodel.nn_modules.qlinear.torch_awq import AwqTorchLinear
    except ImportError:
        return None
    layers = [m for m in model.modules() if type(m) is AwqTorchLinear]
    if not layers:
        return None
    if compiled is None:
        compiled = layers[0].qweight.device.type == "cuda"
    why_not = None
    if compiled:
        dtype = getattr(model, "dtype", layers[0].scales.dtype)  # the activations' (the forward computes fp32 in fp16)
        why_not = warm_compiled(layers, dtype if dtype in (torch.float16, torch.bfloat16) else torch.float16)
    if why_not:
        log.warning("AWQ dequantize stays eager (the same numbers, slower): torch.compile did not run: %s", why_not)
    dequant = compiled_dequantize() if compiled and not why_not else None
    for m in layers:
        m.forward = forward_of(m, dequant=dequant)
    return "compiled" if dequant else f"eager ({why_not})" if why_not else "eager"
