"""Issue 19's prefill lever, as an experiment: the decoder's element-wise work (RMSNorm, the MLP's act * up, RoPE)
through torch.compile (Inductor fuses each into a few kernels; the MLP's matmuls stay cuBLAS calls), the rest of
the model as it is. eval_speed.py's `:compiled` variant suffix turns it on for that variant and off after it.
4-bit models: gptqmodel's TorchLinear `dequantize_weight` compiled too (one fused kernel per weight instead of the
eager unpack, subtract, scale passes). AWQ's dequantize is the product's since 2026-12-06 (quantize/_awq_torch.py
compiles it on CUDA; eval_speed.py's `:eager-dequantize` times it eager).

Every MLP module (with exact=False every RMSNorm too) gets its class's forward compiled once (`dynamic=True`: one
graph for every row count and length, so a bucket's new shape does not recompile), and the modeling module's
`apply_rotary_pos_emb` is replaced by its compiled self. Shapes stay the canonical plan's, so a question's
numbers still do not depend on its batch-mates.

`exact=True, norms=True` (the defaults, eval_speed.py's `:compiled`) is the product's own `eval.elementwise=compiled`
(ragqa_exp/backends/elementwise.py: each piece checked against eager at load), plus a GPTQ model's dequantize.
The other modes below are this file's own, for measuring. `exact=True` keeps eager's numbers where a fused kernel can: it sets Inductor's
`emulate_precision_casts` (a fused kernel rounds to bf16/fp16 wherever the eager ops would; by default Inductor keeps
fp32 between fused ops, a precision gain that changes the numbers), and compiles Llama's RMSNorm around an eager mean
(the product's `exact_compile.llama_rms_norm`: the mean is a reduction whose summation order Inductor would pick; as a custom op it stays
eager's, and the square before it and the scaling after it are fused: ~7 passes of the activation's size over memory
instead of ~18). On this CPU (2026-12-06, a 2-layer bf16 Llama, its logits): the compiled MLP and RoPE bit-identical
to eager with the emulation, off by up to 0.0078 and 0.0098 without; the RMSNorm's own forward compiled off by
0.0039-0.0625 even with the emulation (`own_norms=True`); the norm around an eager mean compiled, with the MLPs and RoPE, bit-identical (the session
13 evening probe). `norms=False` (eval_speed.py's `:compiled-eager-norms`) leaves the norms eager, as session 12
measured. On a GPU, eval_speed.py counts the token ids equal to the first variant's.
`exact=False`: norms too, Inductor's default precision (the H100 run of 2026-12-06: 13-14% faster, token ids equal on
88 of 980 random-weight prompts).
"""
from __future__ import annotations

import sys
import types


def compile_elementwise(model, exact: bool = True, norms: bool = True, own_norms: bool = False, whole_mlp: bool = False,
                        whole_layer: bool = False):
    """Compile the model's MLPs, RoPE and a GPTQ model's dequantize in place, and its norms; returns a function that
    puts the eager ones back, and Inductor's precision setting. exact=True, norms=True: the product's path
    (`product_compile`). Otherwise this file's own: exact=True keeps eager's roundings (norms=False: the norms eager;
    own_norms=True, compile_exactness.py's control: each RMSNorm's own forward compiled, its mean included),
    exact=False compiles every RMSNorm's own forward at Inductor's default precision. whole_mlp=True: the product's
    path with each MLP's whole forward compiled instead of act(gate) * up alone (its projections inside the compiled
    function, as session 15 measured), a 16-bit model's only."""
    import torch
    import torch._inductor.config as inductor

    if exact and norms and not own_norms:  # the product's path (eval.elementwise=compiled)
        return product_compile(model, whole_mlp, whole_layer)
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    emulate = inductor.emulate_precision_casts
    inductor.emulate_precision_casts = exact
    compiled: dict[type, object] = {}
    patched: list = []
    # a 4-bit model's MLP holds its quantized layers: compiled inside a compiled MLP, gptqmodel's TorchLinear lost
    # its `self` (an H100, 2026-12-06), so there the MLP stays eager
    four_bit = any(type(m).__name__ in ("TorchLinear", "AwqTorchLinear") for m in model.modules())
    for module in model.modules():
        cls = type(module)
        if cls.__name__.endswith("RMSNorm"):
            if exact and not (norms and own_norms):
                continue
        elif not (cls.__name__.endswith("MLP") and not four_bit):
            continue
        if cls not in compiled:
            compiled[cls] = torch.compile(cls.forward, dynamic=True)
        module.forward = types.MethodType(compiled[cls], module)
        patched.append(module)
    n_gptq, undo_gptq = compile_gptq_dequantize(model)
    modeling = sys.modules[type(model).__module__]
    rope = getattr(modeling, "apply_rotary_pos_emb", None)
    if rope is not None:
        modeling.apply_rotary_pos_emb = torch.compile(rope, dynamic=True)

    def restore() -> None:
        for module in patched:
            del module.forward  # the class's forward again
        if rope is not None:
            modeling.apply_rotary_pos_emb = rope
        undo_gptq()
        inductor.emulate_precision_casts = emulate

    print(f"compiled: {len(patched)} modules ({', '.join(sorted(t.__name__ for t in compiled))})"
          f"{', apply_rotary_pos_emb' if rope is not None else ''}, {n_gptq} TorchLinear dequantize_weight, "
          f"{'exact (eager roundings)' if exact else 'fused (fp32 between ops)'}", flush=True)
    return restore


def compile_gptq_dequantize(model):
    """gptqmodel's TorchLinear `dequantize_weight` compiled on every such layer (not a product path); returns (layers,
    a function that puts the eager one back)."""
    import torch

    gptq = [m for m in model.modules() if type(m).__name__ == "TorchLinear"]
    if gptq:
        fn = torch.compile(type(gptq[0]).dequantize_weight, dynamic=False)
        for m in gptq:
            m.dequantize_weight = types.MethodType(fn, m)
    return len(gptq), lambda: [m.__dict__.pop("dequantize_weight", None) for m in gptq]


def product_compile(model, whole_mlp: bool = False, whole_layer: bool = False):
    """`eval.elementwise=compiled` as the eval runs it (backends/elementwise.py: each piece checked against eager at
    load), plus a GPTQ model's dequantize (`compile_gptq_dequantize`); returns the restore. `whole_mlp`: then each
    gated MLP's whole forward compiled over the product's act(gate) * up (restored with the rest). `whole_layer`:
    eval.elementwise=compiled-layers instead (backends/compiled_layers.py: each decoder layer's whole forward), a
    16-bit model's only."""
    from ragqa_exp.backends import elementwise

    ran = elementwise.use(model, "compiled-layers" if whole_layer else "compiled")
    assert not whole_layer or ran.startswith("compiled layers"), ran
    if whole_mlp:
        import torch

        mlps = [m for m in model.modules() if elementwise.is_gated_mlp(m)]
        assert ran.startswith("compiled") and mlps, ran
        assert not any(type(m).__name__ in ("TorchLinear", "AwqTorchLinear") for m in model.modules()), "16-bit models only"
        fn = torch.compile(type(mlps[0]).forward, dynamic=True, options={"emulate_precision_casts": True})
        for m in mlps:
            m.forward = types.MethodType(fn, m)  # elementwise.restore deletes it with the product's
        ran += f"; {len(mlps)} {type(mlps[0]).__name__} whole forwards compiled"
    n_gptq, undo_gptq = compile_gptq_dequantize(model)

    def restore() -> None:
        elementwise.restore(model)
        undo_gptq()

    print(f"compiled: eval.elementwise=compiled: {ran}; {n_gptq} TorchLinear dequantize_weight", flush=True)
    return restore
