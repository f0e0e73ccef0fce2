"""Does compile_elementwise.py keep eager's numbers? A small bf16 Llama's logits, eager against each way of compiling
its element-wise work, bit for bit (no GPU needed; on a GPU it checks that GPU's kernels):

  exact               the MLPs, RoPE and the RMSNorms around an eager mean (eval_speed.py's `:compiled`)
  exact-eager-norms   the same with the norms eager (`:compiled-eager-norms`, session 12's `:compiled`)
  exact-plain-norms   control: the RMSNorm's own forward compiled, with Inductor's precision emulation on
  fused               control: every norm and MLP at Inductor's default precision (`:compiled-fused`)

  python benchmarks/compile_exactness.py --out benchmarks/results/compile_exactness_cpu.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

MODES = ("exact", "exact-eager-norms", "exact-plain-norms", "fused")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if __import__("torch").cuda.is_available() else "cpu")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    import compile_elementwise as ce

    cfg = LlamaConfig(vocab_size=1000, hidden_size=512, intermediate_size=1376, num_hidden_layers=2,
                      num_attention_heads=8, num_key_value_heads=8, initializer_range=0.2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(device=a.device, dtype=torch.bfloat16).eval()
    ids = torch.randint(0, cfg.vocab_size, (4, 96), device=a.device)
    with torch.no_grad():
        ref = model(ids).logits
    res = {"device": torch.cuda.get_device_name() if a.device == "cuda" else "cpu", "torch": torch.__version__,
           "model": "Llama, 2 layers, hidden 512, bf16, random", "input": list(ids.shape), "modes": {}}
    for mode in MODES:
        restore = ce.compile_elementwise(model, exact=mode != "fused", norms=mode != "exact-eager-norms",
                                         own_norms=mode == "exact-plain-norms")
        with torch.no_grad():
            got = model(ids).logits
        restore()
        torch._dynamo.reset()
        res["modes"][mode] = {"bit_identical": bool(torch.equal(ref, got)),
                              "max_abs_diff": (ref.float() - got.float()).abs().max().item()}
        print(mode, res["modes"][mode], flush=True)
    Path(a.out).write_text(json.dumps(res, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
