"""Quantize + load + generate a Llama-2-7B-shaped model with each 4-bit method (bnb, gptq, awq) on a GPU.

No 7B weights are reachable from the GPU machine, so the model has random weights with
rinna/youri-7b-instruction's shapes (Llama-2-7B: hidden 4096, MLP 11008, 32 heads, vocab 32000) and
`--layers` decoder layers. Accuracy is meaningless here; time, memory and kernels are what is measured.
Each method runs in its own process (fresh CUDA context: per-process NVML memory and torch peaks are its own).

    python benchmarks/quant_7b_shapes.py --layers 32 --out benchmarks/results/quant_7b_shapes.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

PROMPT_TOKENS, NEW_TOKENS, BATCH = 700, 16, 8


def make_model(path: Path, layers: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                      num_hidden_layers=layers, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-6,
                      torch_dtype="float16")
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).half()
    model.save_pretrained(path)
    word_level_tokenizer(cfg.vocab_size).save_pretrained(path)


def word_level_tokenizer(vocab: int):
    """No hub tokenizer is reachable: a word-level one whose token i (>= 4) is the word `w<i>` (exact round trip)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast

    specials = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
    tk = Tokenizer(models.WordLevel(vocab={**specials, **{f"w{i}": i for i in range(4, vocab)}}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def run_method(method: str, model_dir: Path, work: Path, calib_n: int, calib_len: int) -> dict:
    import torch
    from omegaconf import OmegaConf

    from ragqa_exp.fsutil import dir_size_mib

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from conftest import compose  # the real config, as the CLI composes it
    import time

    from ragqa_exp.measure import MemoryTracker
    from ragqa_exp.quantize import method_module
    from ragqa_exp.quantize.base import QuantInputs

    cfg = OmegaConf.to_object(compose([f"quant={method}", "model.source=hub", f"model.path={model_dir}",
                                       "model.name=llama2_7b_shapes", "model.dtype=float16",
                                       f"calib_data.n_samples={calib_n}", f"calib_data.max_length={calib_len}"]))
    g = torch.Generator().manual_seed(0)
    calib_ids = [torch.randint(100, 31000, (calib_len,), generator=g).tolist() for _ in range(calib_n)]
    texts = [" ".join(f"w{i}" for i in ids) for ids in calib_ids]
    module = method_module(method)
    out = work / method
    out.mkdir(parents=True, exist_ok=True)
    with MemoryTracker() as load_mem:
        facts = module.quantize(cfg.quant, QuantInputs(str(model_dir), cfg.model, texts, calib_len), out)
        q = module.load(cfg.quant, str(out), cfg.model)
    model = q.model
    ids = torch.randint(100, 31000, (BATCH, PROMPT_TOKENS), generator=g).cuda()

    def timed(batch) -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        model.generate(input_ids=batch, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) * 1000

    with MemoryTracker() as gen_mem, torch.inference_mode():
        runs = [(timed(ids[:1]), timed(ids)) for _ in range(4)]  # 1 warm-up + 3 timed, batch 1 and batch 8
    b1 = [r[0] for r in runs[1:]]
    bb = [r[1] for r in runs[1:]]
    lm, gm = load_mem.report, gen_mem.report
    return {
        "method": method, "kernel": q.kernel, "kernel_fallback_reason": q.kernel_fallback_reason,
        "quant_seconds": facts.get("quant_seconds"), "model_size_mib": dir_size_mib(out),
        "gpu_mem_load_mib": lm.gpu_mem_process_mib_end, "gpu_mem_peak_generate_mib": gm.gpu_mem_process_mib_peak,
        "torch_peak_allocated_mib": gm.torch_peak_allocated_mib, "torch_peak_reserved_mib": gm.torch_peak_reserved_mib,
        "generate_batch1_ms_median": sorted(b1)[len(b1) // 2], f"generate_batch{BATCH}_ms_median": sorted(bb)[len(bb) // 2],
        "extra": {**facts, **q.extra},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--methods", default="bnb,gptq,awq")
    ap.add_argument("--calib-n", type=int, default=32)
    ap.add_argument("--calib-len", type=int, default=512)
    ap.add_argument("--work", default="/tmp/q7b")
    ap.add_argument("--out", default="benchmarks/results/quant_7b_shapes.json")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    work = Path(a.work)
    model_dir = work / f"llama2_7b_shapes_{a.layers}l"
    if a.one:
        print(json.dumps(run_method(a.one, model_dir, work, a.calib_n, a.calib_len)))
        return
    if not (model_dir / "config.json").exists():
        make_model(model_dir, a.layers)
    results = []
    for m in a.methods.split(","):
        t0 = time.time()
        p = subprocess.run([sys.executable, __file__, "--one", m, "--layers", str(a.layers), "--work", a.work,
                            "--calib-n", str(a.calib_n), "--calib-len", str(a.calib_len)], capture_output=True, text=True)
        Path(work / f"{m}.log").write_text(p.stdout + p.stderr)
        lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
        res = json.loads(lines[-1]) if p.returncode == 0 and lines else {
            "method": m, "error": (p.stderr.strip().splitlines() or ["?"])[-1][:300]}
        res["wall_seconds"] = round(time.time() - t0, 1)
        results.append(res)
        print(json.dumps(res), flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"layers": a.layers, "prompt_tokens": PROMPT_TOKENS, "new_tokens": NEW_TOKENS,
                                       "batch": BATCH, "calib_n": a.calib_n, "calib_len": a.calib_len,
                                       "results": results}, indent=2))


if __name__ == "__main__":
    main()
