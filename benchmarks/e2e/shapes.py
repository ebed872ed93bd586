"""Models and step shapes of the end-to-end DPO benchmark.

The two models have the shapes of Qwen2-0.5B and Llama-3.2-1B (their published configs:
layers, widths, heads, vocabulary, tied embeddings, RoPE base) with random weights built
from the config: nothing is downloaded. A step is `pairs` preference pairs of `seq_len`
tokens each side (prompt plus completion, no padding), so every provider processes exactly
2 * pairs * seq_len tokens per optimizer step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

from prefopt.models import disable_dropout

MODELS = {
    # Qwen/Qwen2-0.5B config.json: 494M parameters, a 151936-token vocabulary.
    "qwen2-0.5b": (Qwen2Config, dict(
        vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
        rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)),
    # meta-llama/Llama-3.2-1B config.json: 1.24B parameters, a 128256-token vocabulary.
    # (Its llama3 RoPE scaling only changes frequencies beyond 8192 positions; plain RoPE
    # at base 500000 costs the same.)
    "llama-3.2-1b": (LlamaConfig, dict(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64,
        max_position_embeddings=131072, rope_theta=500_000.0, rms_norm_eps=1e-5,
        tie_word_embeddings=True)),
    # The CPU smoke test's model: the same code paths in a second.
    "tiny-llama": (LlamaConfig, dict(
        vocab_size=515, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=True)),
}


@dataclass(frozen=True)
class Shape:
    model: str
    seq_len: int  # tokens per sequence: prompt + completion
    pairs: int  # preference pairs per micro-batch (2 * pairs sequences)

    @property
    def prompt_len(self) -> int:
        return self.seq_len // 4

    @property
    def tokens_per_step(self) -> int:
        return 2 * self.pairs * self.seq_len

    @property
    def label(self) -> str:
        return f"{self.model} T={self.seq_len} B={self.pairs}"


GPU_SHAPES = tuple(Shape(model, seq_len, pairs) for model in ("qwen2-0.5b", "llama-3.2-1b")
                   for seq_len in (1024, 2048) for pairs in (4, 8))
CPU_SHAPES = (Shape("tiny-llama", 48, 2),)


def build_model(name: str, *, seed: int, gradient_checkpointing: bool,
                device: torch.device = torch.device("cpu"), dtype: torch.dtype = torch.float32):
    """The model `name` with weights drawn from `seed` on `device` (a second, not a minute,
    for a 1B model on a GPU): equal for every provider."""
    config_cls, kwargs = MODELS[name]
    config = config_cls(**kwargs, attention_dropout=0.0, bos_token_id=1, eos_token_id=2,
                        pad_token_id=0)
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    with device:
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    disable_dropout(model)
    return model
