"""quant=bnb: bitsandbytes 4-bit (nf4/fp4, optional double quant), quantized while loading.

No calibration: `from_pretrained(quantization_config=BitsAndBytesConfig(...))` quantizes each weight as it
loads (that load is `quant_seconds`); the 4-bit model is then saved to `out_dir` for its size on disk.
"""
from __future__ import annotations

import time
from pathlib import Path

from ragqa_exp.errors import DependencyError
from ragqa_exp.fsutil import atomic_dir
from ragqa_exp.models import dir_size_mib, load_model, load_tokenizer, resolve_dtype, resolve_quant_device, weights_mib
from ragqa_exp.quantize import QuantRequest, QuantResult


def quantize_and_load(req: QuantRequest) -> QuantResult:
    q = req.cfg.quant
    dev = resolve_quant_device(q.device)
    try:
        import bitsandbytes as bnb  # noqa: F401
    except ImportError as e:
        raise DependencyError(f"quant=bnb needs bitsandbytes: pip install -e '.[quant]' ({e})") from None
    import torch
    from transformers import BitsAndBytesConfig

    kind = "cuda" if dev.startswith("cuda") else "cpu"
    dtype = resolve_dtype(req.cfg.model.dtype, kind)
    compute = dtype if q.compute_dtype == "auto" else resolve_dtype(q.compute_dtype, kind)
    bnb_cfg = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.bnb_quant_type,
        bnb_4bit_use_double_quant=q.bnb_double_quant,
        bnb_4bit_compute_dtype=compute,
    )
    target = f"cuda:{torch.cuda.current_device()}" if dev == "cuda" else dev
    t0 = time.perf_counter()
    model = load_model(req.model_dir, dtype, req.cfg.model, quantization_config=bnb_cfg, device_map={"": target})
    quant_seconds = time.perf_counter() - t0
    tok = load_tokenizer(req.model_dir, req.cfg.model)

    out = Path(req.out_dir)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    qs = getattr(layers[0].weight, "quant_state", None) if layers else None
    return QuantResult(
        model=model.eval(), tokenizer=tok, method="bnb", bits=4,
        group_size=getattr(qs, "blocksize", None),  # bnb quantizes in blocks (64 weights for 4-bit)
        kernel=f"bitsandbytes-Linear4bit-{q.bnb_quant_type}-{kind}",
        quant_seconds=round(quant_seconds, 2), model_size_mib=dir_size_mib(out), artifact_dir=str(out),
        extra={
            "double_quant": q.bnb_double_quant,
            "compute_dtype": str(compute).removeprefix("torch."),
            "linear4bit_layers": len(layers),
            "weights_mib": weights_mib(out),
        },
    )
