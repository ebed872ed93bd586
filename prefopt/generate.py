"""Sampling completions from a policy, with prompts rendered exactly as in training.

    completions = generate(model, tokenizer, ["sort 5213"], GenerationConfig())

The prompt goes through the same chat template and generation prompt as the training
data (`Encoder.prompt_ids`), so a policy is asked in the form it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prefopt.data.records import Text
from prefopt.data.tokenize import Encoder, TokenizeConfig


@dataclass
class GenerationConfig:
    max_new_tokens: int = 32
    do_sample: bool = False
    """Sample (with temperature and top_p) instead of greedy decoding."""
    temperature: float = 1.0
    top_p: float = 1.0
    num_samples: int = 1
    """Completions per prompt (returned consecutively)."""
    batch_size: int = 64


@torch.no_grad()
def generate(model, tokenizer, prompts: list[Text], cfg: GenerationConfig | None = None,
             tokenize: TokenizeConfig | None = None) -> list[str]:
    """`cfg.num_samples` completions per prompt, decoded without special tokens."""
    cfg = cfg or GenerationConfig()
    encoder = Encoder(tokenizer, tokenize or TokenizeConfig(
        max_length=getattr(model.config, "max_position_embeddings", 4096)))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[str] = []
    prompt_ids = encoder.prompt_ids(prompts)
    for start in range(0, len(prompt_ids), cfg.batch_size):
        chunk = prompt_ids[start:start + cfg.batch_size]
        width = max(len(p) for p in chunk)
        # Left padding: every prompt ends where generation starts.
        input_ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, ids in enumerate(chunk):
            input_ids[row, width - len(ids):] = torch.tensor(ids)
            attention_mask[row, width - len(ids):] = 1
        sampling = {"temperature": cfg.temperature, "top_p": cfg.top_p} if cfg.do_sample else {}
        generated = model.generate(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
            max_new_tokens=cfg.max_new_tokens, do_sample=cfg.do_sample,
            num_return_sequences=cfg.num_samples, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id, **sampling)
        out += tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True)
    model.train(was_training)
    return out
