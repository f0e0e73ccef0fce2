"""Write a GPTQ-format or AWQ(GEMM)-format 4-bit artifact of a model by round-to-nearest (gptqmodel's RTN),
without calibration: for speed measurements of the GPTQ/AWQ kernels at sizes where calibrating takes longer
than the measurement budget (eval speed depends on the format and kernel, not on how the 4-bit values were
chosen). The AWQ artifact is RTN's GEMM export, labelled as AWQ so that the AWQ loaders and kernels run it.
Not for accuracy numbers.

  python benchmarks/rtn_artifact.py MODEL_DIR OUT_DIR gptq|awq [--device cuda]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("out_dir")
    ap.add_argument("fmt", choices=["gptq", "awq"])
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()
    if a.device == "cpu":  # as ragqa_exp does: gptqmodel sizes its CPU pools from this
        os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(os.cpu_count() or 1))
    import torch
    from gptqmodel import BACKEND, GPTQModel
    from gptqmodel.quantization.config import FORMAT, RTNConfig

    fmt = FORMAT.GPTQ if a.fmt == "gptq" else FORMAT.GEMM
    t0 = time.perf_counter()
    qm = GPTQModel.load(a.model_dir, RTNConfig(bits=4, group_size=128, format=fmt), device=a.device, dtype=torch.bfloat16)
    qm.quantize(None, backend=BACKEND.GPTQ_TORCH if a.fmt == "gptq" else BACKEND.AWQ_TORCH)
    qm.save(a.out_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        if (Path(a.model_dir) / name).is_file():
            shutil.copyfile(Path(a.model_dir) / name, Path(a.out_dir) / name)
    if a.fmt == "awq":
        cfg_path = Path(a.out_dir) / "config.json"
        cfg = json.loads(cfg_path.read_text())
        qc = cfg["quantization_config"]
        qc.update(method="awq", quant_method="awq", version="gemm", zero_point=not qc.get("sym", True))
        cfg_path.write_text(json.dumps(cfg, indent=2))
    (Path(a.out_dir) / "RTN_FOR_SPEED_ONLY.txt").write_text("Round-to-nearest 4-bit weights written by "
                                                          "benchmarks/rtn_artifact.py for speed measurements.\n")
    print(f"rtn {a.fmt}: {time.perf_counter() - t0:.1f} s -> {a.out_dir}")


if __name__ == "__main__":
    main()
