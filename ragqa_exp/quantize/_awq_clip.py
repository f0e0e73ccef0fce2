"""AWQ's clipping search written as batched matmuls: the same search as gptqmodel 7.6's
`AWQProcessor._compute_best_clip`, a fraction of the time (its broadcast multiply + sum over a
[out, tokens, groups, group_size] tensor is >90% of AWQ's time on CPU; benchmarks/QUANT_NOTES.md).

Installed only while quantizing (`fast_awq_clip()`), and only on the gptqmodel line it was written for:
on another version the library's own search runs (a speed-up is not worth a silent behaviour change).
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

import torch

log = logging.getLogger(__name__)

WRITTEN_FOR = "7.6."  # gptqmodel version prefix whose _compute_best_clip this reproduces


@torch.inference_mode()
def _compute_best_clip(self, w, input_feat, n_grid=20, max_shrink=0.5, n_sample_token=512):
    """AWQProcessor._compute_best_clip of gptqmodel 7.6, the same search with its two products written as
    batched matmuls (float32) instead of a broadcast multiply + sum over a [out, tokens, groups, group_size]
    tensor; that broadcast is >90% of AWQ's time on CPU (benchmarks/QUANT_NOTES.md). On float32 weights both
    pick the same clips; on bf16 weights gptqmodel's products round in bf16 and its pick differs in a few %
    of groups, never better by the criterion both minimise (tests/test_gptqmodel_patches.py)."""
    assert w.dim() == 2
    co, ci = w.shape
    gs = self.qcfg.group_size if self.qcfg.group_size > 0 else ci
    x = input_feat.reshape(-1, input_feat.shape[-1])
    x = x[:: max(1, x.shape[0] // n_sample_token)]
    x = x.to(device=w.device, dtype=torch.float32).reshape(x.shape[0], -1, gs)  # [tokens, groups, gs]
    wg = w.reshape(co, 1, -1, gs)
    ob = 256 if co % 256 == 0 else 64  # as gptqmodel: output channels per batch
    assert co % ob == 0
    clamp_buf = torch.empty_like(wg[:ob])
    quant_buf = torch.empty_like(clamp_buf)
    best_all = []
    for i in range(co // ob):
        wb = wg[i * ob : (i + 1) * ob]
        org_max = wb.abs().amax(dim=-1, keepdim=True)  # [ob, 1, groups, 1]
        best = org_max.clone()
        min_errs = torch.full(org_max.shape, 1e9, dtype=torch.float32, device=w.device)
        org_out = torch.einsum("tgk,ogk->otg", x, wb[:, 0].float())
        for i_s in range(int(max_shrink * n_grid)):
            max_val = org_max * (1 - i_s / n_grid)
            torch.clamp(wb, -max_val, max_val, out=clamp_buf)
            self._pseudo_quantize_tensor_into(clamp_buf, quant_buf)
            cur = torch.einsum("tgk,ogk->otg", x, quant_buf[:, 0].float())
            err = (cur - org_out).pow(2).mean(dim=1).view(min_errs.shape)
            better = err < min_errs
            min_errs[better] = err[better]
            best[better] = max_val[better]
        best_all.append(best)
    return torch.cat(best_all, dim=0).squeeze(1)


def clip_search_host(group_size: int, bits: int = 4, sym: bool = True):
    """A stand-in for the AWQProcessor whose method the clip search is: just what both searches read (`qcfg`,
    `_pseudo_quantize_tensor_into`), to run gptqmodel's search and this one side by side outside a
    quantization (tests, benchmarks/awq_clip_search.py)."""
    from types import SimpleNamespace

    from gptqmodel.looper.awq_processor import AWQProcessor

    host = SimpleNamespace(qcfg=SimpleNamespace(group_size=group_size, bits=bits, sym=sym))
    host._pseudo_quantize_tensor_into = AWQProcessor._pseudo_quantize_tensor_into.__get__(host)
    return host


@contextmanager
def fast_awq_clip() -> Iterator[bool]:
    """Swap in the matmul clip search for the duration of the block; yields whether it was installed."""
    from importlib.metadata import version

    from gptqmodel.looper.awq_processor import AWQProcessor

    found = version("gptqmodel")
    if not found.startswith(WRITTEN_FOR):
        log.warning("gptqmodel %s: the fast AWQ clip search was written for %sx; using the library's own", found, WRITTEN_FOR)
        yield False
        return
    saved = AWQProcessor.__dict__["_compute_best_clip"]
    AWQProcessor._compute_best_clip = _compute_best_clip
    try:
        yield True
    finally:
        AWQProcessor._compute_best_clip = saved
