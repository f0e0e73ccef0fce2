"""eval.elementwise=compiled (backends/elementwise.py): the decoder's RMSNorms, act(gate) * up and RoPE through
torch.compile compute eager's numbers bit for bit, or the load says why not and the model stays eager."""
from __future__ import annotations

import pytest

from conftest import run_config


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def tiny(kind: str, device: str = "cpu"):
    """A random 2-layer bf16 Llama or Gemma 3 (sliding-window layer, then full attention), weights large enough that
    roundings show in the logits."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    shape = dict(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4)
    if kind == "gemma3":
        cfg = Gemma3TextConfig(**shape, num_key_value_heads=1, head_dim=64, sliding_window=24,
                               layer_types=["sliding_attention", "full_attention"])
        cls = Gemma3ForCausalLM
    else:
        cfg, cls = LlamaConfig(**shape, num_key_value_heads=2), LlamaForCausalLM
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = cls(cfg).to(torch.bfloat16).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.5 if p.dim() > 1 else 0.3)
    return model.to(device)


def logits(model):
    import torch

    ids = torch.randint(0, 512, (4, 96), generator=torch.Generator().manual_seed(1)).to(model.device)
    with torch.inference_mode():
        return model(ids).logits


@pytest.mark.slow  # torch.compile: ~5-10 s a model on a CPU
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("kind", "pieces"), [("llama", "LlamaMLP, LlamaRMSNorm, apply_rotary_pos_emb"),
                                              ("gemma3", "Gemma3MLP, Gemma3RMSNorm, apply_rotary_pos_emb")])
def test_compiled_pieces_compute_eager_logits_bit_for_bit(kind, pieces, device):
    import torch

    from ragqa_exp.backends import elementwise

    from torch._dynamo.utils import counters

    model = tiny(kind, device)
    eager = logits(model)
    counters.clear()
    try:
        assert elementwise.use(model, "compiled") == f"compiled ({pieces})"
        assert torch.equal(logits(model), eager)
        assert counters["stats"]["unique_graphs"] > 0
        assert not counters["graph_break"], list(counters["graph_break"])[0][:200]  # each piece one graph
    finally:
        elementwise.restore(model)
    assert not any("forward" in m.__dict__ for m in model.modules())


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_automatic_dynamic_shapes_compute_eager_logits_bit_for_bit(monkeypatch, device):
    """exact_compile.DYNAMIC=None (benchmarks/eval_speed.py's `:auto-dynamic`): Dynamo's automatic dynamic shapes, the
    head and hidden sizes constants in the kernels. The load's check meets two shapes first, so the logits run through
    the graph with symbolic rows and tokens."""
    from ragqa_exp.backends import exact_compile

    monkeypatch.setattr(exact_compile, "DYNAMIC", None)
    test_compiled_pieces_compute_eager_logits_bit_for_bit("llama", "LlamaMLP, LlamaRMSNorm, apply_rotary_pos_emb", device)


@pytest.mark.slow
def test_every_shape_of_an_eval_runs_compiled_past_dynamos_default_recompile_limit(monkeypatch):
    """A piece is traced per rank and per size-1 dimension: the tiny Gemma 3's norm meets hidden states and q / k heads
    (4 heads, 1 KV head), one and three rows, one and several tokens, 12 graphs, past Dynamo's default limit of 8 (after
    which a new shape would run eager, silently). Made loud here: hitting the limit raises."""
    import torch

    from ragqa_exp.backends import elementwise

    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 8)  # Dynamo's default, whatever ran before
    monkeypatch.setattr(torch._dynamo.config, "fail_on_recompile_limit_hit", True)
    torch._dynamo.reset()
    model = tiny("gemma3")
    try:
        assert elementwise.use(model, "compiled").startswith("compiled (")
        with torch.inference_mode():
            for rows, tokens in ((1, 5), (3, 1), (1, 1), (3, 9), (2, 7)):
                model(torch.randint(0, 512, (rows, tokens), generator=torch.Generator().manual_seed(rows)))
    finally:
        elementwise.restore(model)
        torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_a_compiled_piece_with_other_numbers_is_caught_at_load_and_the_model_stays_eager(monkeypatch, device):
    """The control: Inductor's default precision (fp32 between fused ops) and the norm's own mean compiled move the
    numbers; the load-time check finds the piece, puts every piece back, and says so."""
    import torch

    from ragqa_exp.backends import elementwise, exact_compile

    def fused(key, fn):
        if key not in fused.seen:
            fused.seen[key] = torch.compile(fn, dynamic=True)  # no emulate_precision_casts
        return fused.seen[key]

    fused.seen = {}

    def own_mean_norm(x, weight, eps):
        dtype = x.dtype
        h = x.to(torch.float32)
        return weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).to(dtype)

    monkeypatch.setattr(exact_compile, "compiled", fused)
    monkeypatch.setitem(elementwise.NORMS, "LlamaRMSNorm", (own_mean_norm, "variance_epsilon"))
    model = tiny("llama", device)
    eager = logits(model)
    ran = elementwise.use(model, "compiled")
    assert ran.startswith("eager (compiled ") and ran.endswith(" differs from eager)"), ran
    assert not any("forward" in m.__dict__ for m in model.modules())
    assert torch.equal(logits(model), eager)


@pytest.mark.slow
def test_a_projection_whose_bits_move_call_to_call_does_not_read_as_a_piece_that_differs():
    """A 4-bit kernel that reduces with atomics gives other bits call to call; the projections are not compiled, so
    the load's check of an MLP is on what is, act(gate) * up, and the pieces stay compiled. (Checked as the whole
    MLP, this model read as `eager (compiled LlamaMLP differs from eager)`.)"""
    import torch

    from ragqa_exp.backends import elementwise

    model = tiny("llama")
    for layer in model.model.layers:
        def noisy(x, project=layer.mlp.gate_proj.forward):
            out = project(x)
            return out + torch.randn_like(out) * 0.01

        layer.mlp.gate_proj.forward = noisy
    try:
        assert elementwise.use(model, "compiled") == "compiled (LlamaMLP, LlamaRMSNorm, apply_rotary_pos_emb)"
    finally:
        elementwise.restore(model)


def test_a_compile_that_fails_leaves_the_model_eager(monkeypatch):
    from ragqa_exp.backends import elementwise, exact_compile

    def broken(key, fn):
        def fail(*args):
            raise RuntimeError("no C++ compiler here\nsecond line")
        return fail

    monkeypatch.setattr(exact_compile, "compiled", broken)
    model = tiny("llama")
    assert elementwise.use(model, "compiled") == "eager (torch.compile failed: RuntimeError: no C++ compiler here)"
    assert not any("forward" in m.__dict__ for m in model.modules())


def test_eager_and_auto_on_a_cpu_leave_the_model_as_it_is():
    from ragqa_exp.backends import elementwise

    model = tiny("llama")
    assert [elementwise.use(model, v) for v in ("eager", "auto")] == ["eager", "eager"]
    assert not any("forward" in m.__dict__ for m in model.modules())


@pytest.mark.slow
def test_the_embedded_model_answers_the_same_compiled_and_says_so(base_model_dir):
    """The real default model through the backend's load: eval_plan records the compiled pieces, and its greedy
    token ids equal the eager load's."""
    from ragqa_exp.backends.hf import HFBackend
    from ragqa_exp.data import load_splits
    from ragqa_exp.evaluate import build_prompts

    rows = load_splits(run_config().data).validation[:6]
    prompts = build_prompts(rows, 1)
    from ragqa_exp.backends import elementwise

    ids = {}
    for value in ("eager", "compiled", "compiled-layers"):
        backend = HFBackend.load(run_config([f"eval.elementwise={value}"]), str(base_model_dir))
        try:
            ids[value] = [g.token_ids for _, g in sorted(backend.generate(prompts, 8))]
            ids[value + " plan"] = backend.plan_record()["elementwise"]
        finally:
            elementwise.restore(backend.model)
    assert ids["eager plan"] == "eager"
    assert ids["compiled plan"] == "compiled (Gemma3MLP, Gemma3RMSNorm, apply_rotary_pos_emb)"
    assert ids["compiled"] == ids["eager"] and all(ids["eager"])
    # whole layers (backends/compiled_layers.py): the load's check passes on this model only with its attention
    # run eagerly between the layer's graphs (compiled inside, it moved this CPU's decode steps)
    assert ids["compiled-layers plan"] == "compiled layers (18 Gemma3DecoderLayer, 109 Gemma3RMSNorm)"
    assert ids["compiled-layers"] == ids["eager"]
