"""quant=none: the model as trained, in its full-precision dtype."""
from __future__ import annotations

from pathlib import Path

from ragqa_exp.models import device, dir_size_mib, load_model, load_tokenizer, resolve_dtype
from ragqa_exp.quantize import QuantRequest, QuantResult


def quantize_and_load(req: QuantRequest) -> QuantResult:
    dtype = resolve_dtype(req.cfg.model.dtype)
    model = load_model(req.model_dir, dtype, req.cfg.model).to(device()).eval()
    tok = load_tokenizer(req.model_dir, req.cfg.model)
    local = Path(req.model_dir)
    return QuantResult(
        model=model, tokenizer=tok, method="none", kernel=f"dense-{str(dtype).removeprefix('torch.')}",
        model_size_mib=dir_size_mib(local) if local.exists() else None,
    )
