"""ragqa_exp: LoRA fine-tuning and 4-bit quantization comparison for Japanese RAG question answering."""
import logging

# torchao (a gptqmodel dependency) logs "Failed to load ..." for each optional CUDA kernel it cannot load on
# every import, and torch warns about its Enum registrations; neither matters to a run.
for _name in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_name).setLevel(logging.ERROR)

__version__ = "0.1.0"
