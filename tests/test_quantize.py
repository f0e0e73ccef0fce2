"""Stage 2 (quantize): bnb / GPTQ / AWQ on the real embedded Gemma 3 270M, on CPU.

Each method quantizes the model once per module (small calibration: 8 samples x 128 tokens) into a temp dir;
the tests then check that the returned model really runs on the library's 4-bit layers, that it generates,
and (GPTQ, AWQ) that the saved artifact reloads with plain `transformers.AutoModelForCausalLM`.
The fast tests at the bottom check the one-line errors and need no model.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import run_config
from ragqa_exp.errors import ConfigError, ResourceError
from ragqa_exp.models import dir_size_mib
from ragqa_exp.quantize import QuantRequest, QuantResult, quantize_and_load

SMALL_CALIB = ["calib_data.n_samples=8", "calib_data.max_length=128"]
PROMPT = "質問: 日本の首都はどこですか?\n答え:"
PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _cfg(method: str, *extra: str):
    return run_config([f"quant={method}", "quant.device=cpu", *SMALL_CALIB, *extra])


def _calib_texts(cfg) -> list[str]:
    from ragqa_exp.data import load_splits
    from ragqa_exp.quantize.calib import calibration_texts

    splits = load_splits(cfg.data)
    return calibration_texts(cfg.calib_data, splits.train, cfg.data.max_passages)


def _quantize(method: str, model_dir: Path, out_dir: Path) -> QuantResult:
    cfg = _cfg(method)
    calib = _calib_texts(cfg) if method in ("gptq", "awq") else []
    return quantize_and_load(QuantRequest(cfg=cfg, model_dir=str(model_dir), out_dir=out_dir, calib_texts=calib))


def _generate(model, tok, n: int = 6) -> tuple[torch.Tensor, str]:
    """Greedy decoding, called the way the evaluate stage calls it."""
    tok.padding_side = "left"
    dev = next(model.parameters()).device
    enc = tok([PROMPT], return_tensors="pt", padding=True).to(dev)
    with torch.inference_mode():
        out = model.generate(
            **enc, max_new_tokens=n, do_sample=False, num_beams=1, pad_token_id=tok.pad_token_id,
            stop_strings=["\n"], tokenizer=tok, temperature=None, top_p=None, top_k=None,
        )
    new = out[:, enc["input_ids"].shape[1] :]
    return new, tok.batch_decode(new, skip_special_tokens=True)[0]


def _layers(model):
    return model.model.layers


def _check_common(r: QuantResult, method: str, base_model_dir: Path, out_dir: Path) -> None:
    assert r.method == method and r.bits == 4
    assert r.quant_seconds is not None and r.quant_seconds > 0
    assert r.artifact_dir == str(out_dir) and (out_dir / "config.json").is_file()
    assert (out_dir / "tokenizer_config.json").is_file()
    assert not list(out_dir.parent.glob(f".{out_dir.name}.*.tmp")), "atomic_dir left a temp dir behind"
    assert r.model_size_mib == dir_size_mib(out_dir)
    # The 262k x 640 bf16 embedding (320 MiB) stays unquantized in every method; the linears shrink ~4x.
    assert r.model_size_mib < dir_size_mib(base_model_dir) - 100
    assert not r.model.training


# --------------------------------------------------------------------------------------------- bnb
@pytest.fixture(scope="module")
def bnb_run(base_model_dir, tmp_path_factory):
    pytest.importorskip("bitsandbytes")
    out = tmp_path_factory.mktemp("bnb") / "quantized"
    return _quantize("bnb", base_model_dir, out), out


@pytest.mark.slow
def test_bnb_linear_layers_are_4bit(bnb_run, base_model_dir):
    import bitsandbytes as bnb

    r, out = bnb_run
    _check_common(r, "bnb", base_model_dir, out)
    assert r.kernel == "bitsandbytes-Linear4bit-nf4-cpu"
    assert r.group_size == 64  # bnb's block size
    for layer in _layers(r.model):
        for name in PROJ:
            mod = getattr(layer.self_attn if name in PROJ[:4] else layer.mlp, name)
            assert isinstance(mod, bnb.nn.Linear4bit), name
    q = _layers(r.model)[0].self_attn.q_proj
    assert type(q) is not torch.nn.Linear
    assert isinstance(q.weight, bnb.nn.Params4bit) and q.weight.dtype == torch.uint8
    assert q.weight.quant_state.quant_type == "nf4"
    assert q.weight.numel() * 2 == q.in_features * q.out_features  # two 4-bit weights per byte
    assert r.extra["linear4bit_layers"] == 7 * len(_layers(r.model))
    cfg = json.loads((out / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "bitsandbytes" and cfg["load_in_4bit"] and cfg["bnb_4bit_use_double_quant"]


@pytest.mark.slow
def test_bnb_generates(bnb_run):
    r, _ = bnb_run
    new, text = _generate(r.model, r.tokenizer)
    assert new.shape[1] >= 1 and text.strip()


# ---------------------------------------------------------------------------------------- gptq / awq
@pytest.fixture(scope="module")
def gptq_run(base_model_dir, tmp_path_factory):
    pytest.importorskip("gptqmodel")
    out = tmp_path_factory.mktemp("gptq") / "quantized"
    return _quantize("gptq", base_model_dir, out), out


@pytest.fixture(scope="module")
def awq_run(base_model_dir, tmp_path_factory):
    pytest.importorskip("gptqmodel")
    out = tmp_path_factory.mktemp("awq") / "quantized"
    return _quantize("awq", base_model_dir, out), out


def _check_gptqmodel_layers(model, expected_kernel: str) -> None:
    from gptqmodel.nn_modules.qlinear import BaseQuantLinear

    for layer in _layers(model):
        for name in PROJ:
            parent = layer.self_attn if name in PROJ[:4] else layer.mlp
            mod = getattr(parent, name)
            assert isinstance(mod, BaseQuantLinear), f"{name}: {type(mod)}"
            assert type(mod).__name__ == expected_kernel
    q = _layers(model)[0].self_attn.q_proj
    assert not isinstance(q, torch.nn.Linear)
    assert q.qweight.dtype == torch.int32 and q.qweight.numel() * 8 == q.in_features * q.out_features
    assert not hasattr(q, "weight") or not isinstance(getattr(q, "weight", None), torch.nn.Parameter)


@pytest.mark.slow
def test_gptq_linear_layers_are_quantlinear(gptq_run, base_model_dir):
    from gptqmodel.nn_modules.qlinear import GPTQQuantLinear

    r, out = gptq_run
    _check_common(r, "gptq", base_model_dir, out)
    assert r.kernel == "TorchLinear" and r.kernel_fallback_reason is None  # auto on CPU: the torch kernel
    assert r.group_size == 128 and r.extra["format"] == "gptq"
    _check_gptqmodel_layers(r.model, "TorchLinear")
    assert isinstance(_layers(r.model)[0].mlp.down_proj, GPTQQuantLinear)
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "gptq" and qc["checkpoint_format"] == "gptq"  # v1, not gptq_v2
    assert qc["bits"] == 4 and qc["group_size"] == 128 and qc["sym"] is True and qc["desc_act"] is False
    gen = json.loads((out / "generation_config.json").read_text())
    assert not gen.get("do_sample", False)  # gptqmodel's do_sample=true rewrite is undone
    assert not r.model.generation_config.do_sample


@pytest.mark.slow
def test_awq_linear_layers_are_quantlinear(awq_run, base_model_dir):
    from gptqmodel.nn_modules.qlinear import AWQuantLinear

    r, out = awq_run
    _check_common(r, "awq", base_model_dir, out)
    assert r.kernel == "AwqTorchLinear" and r.kernel_fallback_reason is None  # AWQ_TORCH on CPU
    assert r.group_size == 128 and r.extra["format"] == "gemm"
    _check_gptqmodel_layers(r.model, "AwqTorchLinear")
    assert isinstance(_layers(r.model)[0].mlp.down_proj, AWQuantLinear)
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "awq" and qc["version"] == "gemm" and qc["bits"] == 4


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_quantized_model_generates(method, request):
    r, _ = request.getfixturevalue(f"{method}_run")
    new, text = _generate(r.model, r.tokenizer)
    assert new.shape[1] >= 1 and text.strip()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_saved_artifact_reloads_with_plain_transformers(method, request):
    """`AutoModelForCausalLM.from_pretrained(out_dir)` on CPU. What it needs: gptqmodel installed (transformers
    5 loads both GPTQ and AWQ checkpoints through it; GPTQ also needs optimum), a bf16/fp16 dtype (the
    checkpoint's, picked by default), and nothing else: no GPU, no network, no gptqmodel API call."""
    from gptqmodel.nn_modules.qlinear import BaseQuantLinear
    from transformers import AutoModelForCausalLM, AutoTokenizer

    r, out = request.getfixturevalue(f"{method}_run")
    model = AutoModelForCausalLM.from_pretrained(str(out), device_map="cpu").eval()
    tok = AutoTokenizer.from_pretrained(str(out))
    q = _layers(model)[0].self_attn.q_proj
    assert isinstance(q, BaseQuantLinear) and not isinstance(q, torch.nn.Linear)
    assert model.config.quantization_config.quant_method.value == method
    new, text = _generate(model, tok)
    assert new.shape[1] >= 1 and text.strip()


# ------------------------------------------------------------------------------------ fast: errors
@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_unknown_backend_is_config_error(method, tmp_path):
    pytest.importorskip("gptqmodel")
    cfg = _cfg(method, "quant.backend=no_such_kernel")
    req = QuantRequest(cfg=cfg, model_dir=str(tmp_path / "absent"), out_dir=tmp_path / "q", calib_texts=["テキスト"])
    with pytest.raises(ConfigError) as e:
        quantize_and_load(req)
    msg = str(e.value)
    assert "quant.backend='no_such_kernel'" in msg and "\n" not in msg
    assert "valid:" in msg and f"{method}_torch" in msg and "torch" in msg
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("method,backend", [("gptq", "awq_torch"), ("awq", "gptq_marlin")])
def test_backend_of_the_other_method_is_config_error(method, backend, tmp_path):
    pytest.importorskip("gptqmodel")
    req = QuantRequest(cfg=_cfg(method, f"quant.backend={backend}"), model_dir=str(tmp_path), out_dir=tmp_path / "q",
                       calib_texts=["テキスト"])
    with pytest.raises(ConfigError, match="valid:"):
        quantize_and_load(req)


def test_backend_names_resolve_case_insensitively():
    pytest.importorskip("gptqmodel")
    from gptqmodel import BACKEND

    from ragqa_exp.quantize._gptqmodel import resolve_backends

    assert resolve_backends("gptq", "Triton", "cpu") == ([BACKEND.GPTQ_TRITON], True)
    assert resolve_backends("gptq", "TORCH", "cpu") == ([BACKEND.GPTQ_TORCH], True)
    assert resolve_backends("awq", "awq_torch", "cpu") == ([BACKEND.AWQ_TORCH], True)
    assert resolve_backends("awq", "torch", "cpu") == ([BACKEND.AWQ_TORCH], True)
    assert resolve_backends("awq", "triton", "cpu") == ([BACKEND.AWQ_GEMM_TRITON], True)
    # auto never hands the choice to gptqmodel (no BACKEND.AUTO: on Hopper it picks Machete, which fails offline)
    assert resolve_backends("gptq", "auto", "cpu") == ([BACKEND.GPTQ_TORCH], False)
    assert resolve_backends("awq", "auto", "cpu") == ([BACKEND.AWQ_TORCH], False)
    cuda, _ = resolve_backends("gptq", "auto", "cuda")
    assert cuda == [BACKEND.GPTQ_MARLIN, BACKEND.GPTQ_EXLLAMA_V2, BACKEND.GPTQ_TRITON, BACKEND.GPTQ_TORCH]
    cuda, _ = resolve_backends("awq", "auto", "cuda")
    assert cuda[0] == BACKEND.AWQ_MARLIN and cuda[-1] == BACKEND.AWQ_TORCH
    assert BACKEND.AUTO not in cuda and BACKEND.GPTQ_MACHETE not in cuda


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
@pytest.mark.parametrize("method", ["bnb", "gptq", "awq"])
def test_cuda_without_gpu_is_resource_error(method, tmp_path):
    cfg = run_config([f"quant={method}", "quant.device=cuda"])
    req = QuantRequest(cfg=cfg, model_dir=str(tmp_path), out_dir=tmp_path / "q", calib_texts=["テキスト"])
    with pytest.raises(ResourceError) as e:
        quantize_and_load(req)
    msg = str(e.value)
    assert "quant.device=cuda" in msg and "quant.device=cpu" in msg and "\n" not in msg


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_empty_calibration_is_config_error(method, tmp_path):
    req = QuantRequest(cfg=_cfg(method), model_dir=str(tmp_path), out_dir=tmp_path / "q", calib_texts=[])
    with pytest.raises(ConfigError, match="calib_data"):
        quantize_and_load(req)


def test_bad_quant_device_is_config_error(tmp_path):
    cfg = run_config(["quant=bnb", "quant.device=tpu"])
    req = QuantRequest(cfg=cfg, model_dir=str(tmp_path), out_dir=tmp_path / "q")
    with pytest.raises(ConfigError, match="quant.device"):
        quantize_and_load(req)
