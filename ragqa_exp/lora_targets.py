"""`lora.target_modules` against the modules the model has, before training starts: the model is built from
its config on the meta device (no weights read, no memory), so a name it does not have is one line naming the
linear layers it does have, not PEFT's error from inside the train stage. Runs first in the train stage (the
job process never imports torch), before the training rows, the tokenizer or the weights are loaded."""
from __future__ import annotations

from ragqa_exp.config import LoraConfig, ModelConfig, ModelSource
from ragqa_exp.errors import ConfigError


def targets(name: str, target: str) -> bool:
    """PEFT's rule for a list of target names (peft.tuners.tuners_utils.check_target_module_exists): the
    module's full name, or its last dotted parts."""
    return name == target or name.endswith("." + target)


def model_modules(location: str, cfg: ModelConfig) -> tuple[list[str], list[str]]:
    """(every module name, the last part of each linear layer's name except the output head, in model order)
    of the model at `location`, built from its config on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    kw = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code} if cfg.source == ModelSource.hub else {}
    config = AutoConfig.from_pretrained(location, **kw)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=kw.get("trust_remote_code", False))
    head = model.get_output_embeddings()
    names = [n for n, _ in model.named_modules()]
    linear = [n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head]
    return names, list(dict.fromkeys(linear))


def check_target_modules(lora: LoraConfig, model: ModelConfig, location: str) -> None:
    names, linear = model_modules(location, model)
    missing = [t for t in lora.target_modules if not any(targets(n, t) for n in names)]
    if not missing:
        return
    kept = [t for t in lora.target_modules if t not in missing] or [t for t in ("q_proj", "v_proj") if t in linear] or linear[:2]
    listed = ", ".join(repr(t) for t in missing)
    raise ConfigError(
        f"lora.target_modules: {listed} {'is not a module' if len(missing) == 1 else 'are not modules'} of "
        f"{model.name}; its linear layers are {', '.join(linear)}; set lora.target_modules=[{','.join(kept)}]")
