"""`eval.elementwise=compiled`: the decoder's element-wise work through torch.compile, with eager's numbers (issue 19's
prefill lever; measured in benchmarks/H200_PROFILE.md). At 7B shapes that work (RMSNorm, the MLP's act(gate) * up,
RoPE) took a fifth of a prefill batch, one eager pass over memory per op; Inductor fuses each piece into a few
kernels. The matmuls and attention stay as they are.

Eager's numbers, not Inductor's: every piece is compiled with Inductor's `emulate_precision_casts` (a fused kernel
rounds to bf16/fp16 wherever the eager ops would; by default it keeps fp32 between ops, which moves the numbers), and
an RMSNorm's mean stays an eager reduction (`exact_compile.mean_last`, a custom op Inductor cannot see into: a compiled reduction
picks its own summation order). The square before it and the scaling after it are fused. On an H100 at 7B shapes,
980 prompts: 30.96 s eager, 27.63 s compiled, 980 of 980 token-id sequences equal (2026-12-07).

Pieces are element-wise on each row, so a row's numbers do not depend on its batch-mates. Each piece is compiled at
load and checked there against the eager module bit for bit, on a prompt-shaped and a decode-shaped input; if one
differs or does not compile, every piece is put back and the eval runs eager, saying why (`eval_plan.elementwise`).

Pieces: the RMSNorm classes of `NORMS` (Llama's formula and Gemma 3's), any `...MLP` module with gate/up/down
projections and `act_fn` (its projections stay the model's own layers, 4-bit ones included), and the modeling
module's `apply_rotary_pos_emb`.
"""
from __future__ import annotations

import sys
import weakref
from typing import Callable, Optional

from ragqa_exp.backends import exact_compile
from ragqa_exp.backends.exact_compile import NORMS, norm_forward

_patched: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> its Patched, for `restore`


def act_mul(act) -> Callable:
    """act(gate) * up, compiled once per activation (its class and settings: the activations carry no weights)."""
    return exact_compile.compiled(("act_mul", type(act), repr(act)), lambda gate, up: act(gate) * up)


def is_gated_mlp(module) -> bool:
    return type(module).__name__.endswith("MLP") and all(
        hasattr(module, a) for a in ("gate_proj", "up_proj", "down_proj", "act_fn", "intermediate_size"))


class Patched:
    """What `use` changed on one model, to check and to put back."""

    def __init__(self, model) -> None:
        self.model = model
        self.modules: list = []
        self.rope: Optional[tuple] = None  # (modeling module, eager apply_rotary_pos_emb)

    def patch(self) -> list[str]:
        pieces: set[str] = set()
        for module in self.model.modules():
            name = type(module).__name__
            if name in NORMS:
                fn, eps = NORMS[name]
                module.forward = norm_forward(module, exact_compile.compiled(fn, fn), getattr(module, eps))
            elif is_gated_mlp(module):
                module.forward = mlp_forward(module, act_mul(module.act_fn))
            else:
                continue
            self.modules.append(module)
            pieces.add(name)
        modeling = sys.modules[type(self.model).__module__]
        rope = getattr(modeling, "apply_rotary_pos_emb", None)
        if rope is not None:
            self.rope = (modeling, rope)
            modeling.apply_rotary_pos_emb = exact_compile.compiled(("rope", rope), rope)
            pieces.add("apply_rotary_pos_emb")
        return sorted(pieces)

    def restore(self) -> None:
        for module in self.modules:
            del module.forward  # the class's forward again
        if self.rope is not None:
            modeling, rope = self.rope
            modeling.apply_rotary_pos_emb = rope
        self.modules, self.rope = [], None

    def differs(self) -> Optional[str]:
        """The first piece whose compiled output is not eager's bit for bit on a prompt-shaped (3 x 5 tokens) and a
        decode-shaped (3 x 1) input, else None. An MLP is checked on what is compiled, act(gate) * up: its projections
        stay the model's own, and a 4-bit kernel that is not run-to-run deterministic (one that reduces with atomics)
        must not read as a compiled piece that differs."""
        import torch

        gen = torch.Generator().manual_seed(0)
        first = next(self.model.parameters())
        dev, dtype = first.device, self.model.dtype

        def rand(*shape):
            return torch.randn(*shape, generator=gen).to(device=dev, dtype=dtype)

        seen: set = set()
        with torch.inference_mode():
            for module in self.modules:
                if type(module) in seen:
                    continue
                seen.add(type(module))
                for tokens in (5, 1):
                    if type(module).__name__ in NORMS:
                        x = rand(3, tokens, module.weight.shape[-1])
                        same = torch.equal(module(x), type(module).forward(module, x))
                    else:
                        gate, up = rand(3, tokens, module.intermediate_size), rand(3, tokens, module.intermediate_size)
                        same = torch.equal(act_mul(module.act_fn)(gate, up), module.act_fn(gate) * up)
                    if not same:
                        return f"compiled {type(module).__name__} differs from eager"
            if self.rope is not None:
                modeling, rope = self.rope
                for tokens in (5, 1):
                    q, k, cos, sin = rand(2, 4, tokens, 64), rand(2, 4, tokens, 64), rand(2, tokens, 64), rand(2, tokens, 64)
                    got, want = modeling.apply_rotary_pos_emb(q, k, cos, sin), rope(q, k, cos, sin)
                    if not all(torch.equal(a, b) for a, b in zip(got, want)):
                        return "compiled apply_rotary_pos_emb differs from eager"
        return None


def mlp_forward(module, fused: Callable) -> Callable:
    return lambda x: module.down_proj(fused(module.gate_proj(x), module.up_proj(x)))


def use(model, elementwise: str) -> str:
    """Compile the model's element-wise pieces in place when `elementwise` asks for it (auto: on a GPU) and they
    compute eager's numbers, or its whole decoder layers (`compiled-layers`: backends/compiled_layers.py; a 4-bit
    model gets the pieces); returns what runs, for eval_plan: "eager", "compiled (<pieces>)", "compiled layers (...)",
    or "eager (<why>)"."""
    device = next(model.parameters()).device.type
    if elementwise == "eager" or (elementwise == "auto" and device != "cuda"):
        return "eager"
    if elementwise == "compiled-layers":
        from ragqa_exp.backends import compiled_layers

        if compiled_layers.sixteen_bit(model):
            layers, ran = compiled_layers.use(model)
            if layers is not None:
                _patched[model] = layers
            return ran
        return use(model, "compiled") + " (compiled-layers: 16-bit models only)"
    patched = Patched(model)
    pieces = patched.patch()
    if not pieces:
        return "eager (no piece of this model is known)"
    try:
        why = patched.differs()
    except Exception as ex:  # noqa: BLE001  a compile that fails leaves the eager model, with its reason
        why = exact_compile.compile_failure(ex)
    if why:
        patched.restore()
        return f"eager ({why})"
    _patched[model] = patched
    return f"compiled ({', '.join(pieces)})"


def restore(model) -> None:
    """Put back what `use` compiled on `model` (its modules' forwards; the modeling module's RoPE, which every model
    of that architecture in this process shares)."""
    patched = _patched.pop(model, None)
    if patched is not None:
        patched.restore()
