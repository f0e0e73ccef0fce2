"""The hf backend's fast path: token-budget batches and newline stop by token id, same greedy answers."""
from __future__ import annotations

import pytest

from conftest import run_config
from ragqa_exp.backends import backend_names, get_backend
from ragqa_exp.backends.hf import HFBackend, newline_token_ids, token_budget_batch


def test_token_budget_batches_longest_first_within_budget():
    lengths = [100, 400, 250, 390, 50, 120]
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # 1, 3, 2, 5, 0, 4
    assert token_budget_batch(order, lengths, 10, 8, 1000) == [1, 3]  # 3 x 410 > 1000
    assert token_budget_batch(order, lengths, 10, 8, 10_000) == order
    assert token_budget_batch(order, lengths, 10, 2, 10_000) == [1, 3]  # batch_size bounds it
    assert token_budget_batch(order, lengths, 10, 8, 5) == [1]  # a prompt over budget goes alone
    rest = [2, 5, 0, 4]
    assert token_budget_batch(rest, lengths, 10, 8, 1100) == [2, 5, 0, 4]  # 4 x 260 <= 1100


def test_backend_registry_has_the_hf_backend():
    assert "hf" in backend_names() and get_backend("hf") is HFBackend


class _Loaded(Exception):
    pass


@pytest.mark.parametrize("invariant,deterministic", [(True, True), (False, True), (True, False), (False, False)])
def test_gpu_kernel_settings_are_set_before_the_model_loads(monkeypatch, invariant, deterministic):
    """eval.invariant_kernels and eval.deterministic: cuBLAS reads its workspace size at the process's first handle,
    so the hf backend sets both before the model loads (a GPU is pretended: torch's flags are set,
    preferred_blas_library and use_deterministic_algorithms are recorded; deterministic mode's NaN fill of
    uninitialized memory is turned off). The `false` cases are the controls: nothing set."""
    import os

    import torch

    from ragqa_exp import quantize
    from ragqa_exp.runtime import CUBLAS_DETERMINISTIC_WORKSPACES, INVARIANT_CUBLAS_ENV

    env_keys = {*INVARIANT_CUBLAS_ENV, "CUBLAS_WORKSPACE_CONFIG"}
    for k in env_keys:
        monkeypatch.delenv(k, raising=False)
    blas, det = [], []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.backends.cuda, "preferred_blas_library", lambda backend=None: blas.append(backend))
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda mode, **kw: det.append(mode))
    monkeypatch.setattr(torch.utils.deterministic, "fill_uninitialized_memory", True)  # torch's default
    m = torch.backends.cuda.matmul
    monkeypatch.setattr(m, "allow_bf16_reduced_precision_reduction", m.allow_bf16_reduced_precision_reduction)
    monkeypatch.setattr(m, "allow_fp16_reduced_precision_reduction", m.allow_fp16_reduced_precision_reduction)
    seen = {}

    class Method:
        @staticmethod
        def load(*_):
            seen.update({k: os.environ.get(k) for k in env_keys}, blas=list(blas), det=list(det),
                        nan_fill=torch.utils.deterministic.fill_uninitialized_memory)
            raise _Loaded

    monkeypatch.setattr(quantize, "method_module", lambda name: Method)
    with pytest.raises(_Loaded):
        HFBackend.load(run_config([f"eval.invariant_kernels={str(invariant).lower()}",
                                   f"eval.deterministic={str(deterministic).lower()}"]), "/nowhere")
    expected_env = {k: None for k in env_keys}
    if deterministic:
        expected_env["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_DETERMINISTIC_WORKSPACES[0]  # ":4096:8", torch's advice
    if invariant:  # its smaller cuBLAS workspace also satisfies deterministic mode: it wins
        expected_env.update(INVARIANT_CUBLAS_ENV)
        assert not m.allow_bf16_reduced_precision_reduction
    assert seen == {**expected_env, "blas": ["cublaslt"] if invariant else [], "det": [True] if deterministic else [],
                    "nan_fill": not deterministic}


@pytest.mark.parametrize("workspace,ok", [(":0:0", False), ("4096", False), (":16:8", True), (":4096:8", True)])
def test_a_cublas_workspace_torch_rejects_is_one_line_before_the_model_loads(monkeypatch, workspace, ok):
    """eval.deterministic with the user's own CUBLAS_WORKSPACE_CONFIG: torch accepts only :4096:8 and :16:8 (else
    its many-line error at the first GEMM); any other value is a ConfigError naming both settings (a GPU is
    pretended). The accepted values are the controls."""
    import torch

    from ragqa_exp.errors import ConfigError
    from ragqa_exp.runtime import deterministic_algorithms

    det = []
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", workspace)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.utils.deterministic, "fill_uninitialized_memory", True)  # restored after
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda mode, **kw: det.append(mode))
    if ok:
        assert deterministic_algorithms()["CUBLAS_WORKSPACE_CONFIG"] == workspace and det == [True]
        return
    with pytest.raises(ConfigError) as err:
        deterministic_algorithms()
    msg = str(err.value)
    assert "\n" not in msg and f"CUBLAS_WORKSPACE_CONFIG={workspace}" in msg and "eval.deterministic=false" in msg
    assert det == []


def test_an_op_without_a_deterministic_implementation_is_one_line_naming_the_setting(embedded, monkeypatch):
    """eval.deterministic: torch raises for an op it has no deterministic implementation of; the eval turns that
    into a ConfigError naming the op and eval.deterministic (a real raise: put_ under deterministic mode on a CPU).
    Control: another RuntimeError propagates unchanged."""
    import torch

    from ragqa_exp.errors import ConfigError

    _, backend = embedded

    def nondeterministic_generate(*_):
        torch.use_deterministic_algorithms(True)
        try:
            torch.zeros(3).put_(torch.tensor([0]), torch.tensor([1.0]))
        finally:
            torch.use_deterministic_algorithms(False)

    monkeypatch.setattr(backend, "_generate_batch", nondeterministic_generate)
    with pytest.raises(ConfigError) as err:
        backend._timed([[1, 2]], None, 4, 4)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("eval.deterministic=true: put_ has no deterministic")
    assert "eval.deterministic=false" in msg

    def other_error(*_):
        raise RuntimeError("something else")

    monkeypatch.setattr(backend, "_generate_batch", other_error)
    with pytest.raises(RuntimeError, match="something else"):
        backend._timed([[1, 2]], None, 4, 4)


@pytest.fixture(scope="module")
def embedded(base_model_dir):
    # a few prompts per batch, so batches really mix lengths; float32: in bf16 the padding of a batch changes
    # the rounding enough to flip greedy tokens of the untrained model (benchmarks/CPU_EVAL.md), which is
    # arithmetic, not the fast path's doing — in float32 any difference is the fast path's
    cfg = run_config(["eval.max_batch_tokens=1600", "model.dtype=float32"])
    return cfg, HFBackend.load(cfg, str(base_model_dir))


def test_newline_stop_ids_are_exactly_the_tokens_holding_a_newline(embedded):
    _, backend = embedded
    tok = backend.tok
    ids = newline_token_ids(tok)
    assert tok.convert_tokens_to_ids("\n") in ids
    assert all("\n" in tok.decode([i]) for i in ids)
    others = [i for i in range(0, len(tok), 997) if i not in ids]
    assert not any("\n" in tok.decode([i]) for i in others)
    assert set(ids) <= set(backend.stop_ids) and tok.eos_token_id in backend.stop_ids


@pytest.mark.slow
def test_fast_path_answers_equal_batch1_greedy(embedded):
    """Same greedy answers whatever the batching: the fast path vs one prompt at a time (eval.batch_size=1)."""
    from ragqa_exp.data import format_prompt, load_splits

    cfg, backend = embedded
    rows = load_splits(cfg.data).validation[:6]  # 2-4 prompts a batch (eval.max_batch_tokens=1600)
    prompts = [format_prompt(r["question"], r["context"], cfg.data.max_passages) for r in rows]
    fast = dict(backend.generate(prompts, 16))
    assert sorted(fast) == list(range(len(prompts)))
    one = dict(HFBackend(backend.model, backend.tok, 1, None, backend.info).generate(prompts, 16))
    assert [fast[i].text for i in range(len(prompts))] == [one[i].text for i in range(len(prompts))]
    assert all(g.completion_tokens <= 16 and g.prompt_tokens > 300 for g in fast.values())


@pytest.mark.slow
def test_a_checkpoint_generation_config_does_not_change_greedy_answers(tmp_path, base_model_dir, monkeypatch):
    """Greedy is pinned: a checkpoint whose generation_config.json asks for a repetition penalty, an n-gram ban
    and a minimum length gives the same answers as the plain checkpoint. Negative control in the same test:
    generating with the checkpoint's config (what inheriting it would do) changes them."""
    import json

    from transformers import GenerationConfig

    from ragqa_exp.backends import hf
    from ragqa_exp.data import format_prompt, load_splits

    odd = tmp_path / "model"
    odd.mkdir()
    for f in base_model_dir.iterdir():
        if f.name != "generation_config.json":
            (odd / f.name).symlink_to(f)
    gen = json.loads((base_model_dir / "generation_config.json").read_text())
    gen.update(repetition_penalty=5.0, no_repeat_ngram_size=2, min_new_tokens=6)
    (odd / "generation_config.json").write_text(json.dumps(gen))

    cfg = run_config(["data.max_passages=1"])
    rows = load_splits(cfg.data).validation[:6]
    prompts = [format_prompt(r["question"], r["context"], 1) for r in rows]
    answers = lambda backend: [g.token_ids for _, g in sorted(backend.generate(prompts, 12), key=lambda x: x[0])]  # noqa: E731
    plain = answers(HFBackend.load(cfg, str(base_model_dir)))
    checkpoint = HFBackend.load(cfg, str(odd))
    assert checkpoint.model.generation_config.repetition_penalty == 5.0  # the odd config was loaded
    assert answers(checkpoint) == plain
    assert checkpoint.run_facts()["generation_config"]["repetition_penalty"] == 1.0

    def inherited(settings):  # the checkpoint's config, with greedy, length and stop ids set on top
        c = GenerationConfig.from_pretrained(odd)
        c.update(do_sample=False, num_beams=1, max_new_tokens=settings["max_new_tokens"],
                 eos_token_id=settings["eos_token_id"], pad_token_id=settings["pad_token_id"])
        return c

    monkeypatch.setattr(hf, "generation_config", inherited)
    assert answers(HFBackend.load(cfg, str(odd))) != plain
