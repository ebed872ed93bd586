"""Loading a trained reward model and scoring (prompt, completion) pairs with it.

    scorer = RewardScorer.load("outputs/.../policy")
    scorer.score(["sort 321"], ["123"])          # tensor([r(x, y)])

Scoring renders each pair exactly as training did (same chat template, same prompt and
completion split, same truncation rules), so a reward means the same thing at both times.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from prefopt.data.collate import collate_groups
from prefopt.data.records import Record, Text
from prefopt.data.tokenize import Encoder, Rule, TokenizeConfig


class RewardScorer:
    def __init__(self, model, tokenizer, tokenize: TokenizeConfig | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        # Score everything we are given: truncate rather than skip, keep empty answers.
        cfg = tokenize or TokenizeConfig(max_length=getattr(model.config,
                                                            "max_position_embeddings", 1024))
        cfg.on_overlong_prompt, cfg.on_empty_completion = Rule.truncate, Rule.keep
        self.encoder = Encoder(tokenizer, cfg)

    @classmethod
    def load(cls, path: str, tokenize: TokenizeConfig | None = None, **model_kwargs
             ) -> "RewardScorer":
        """A reward model saved by prefopt-train (objective=reward_bt or reward_pl)."""
        model = AutoModelForSequenceClassification.from_pretrained(path, **model_kwargs)
        if model.config.num_labels != 1:
            raise ValueError(f"{path} is not a scalar reward model "
                             f"(num_labels={model.config.num_labels})")
        return cls(model, AutoTokenizer.from_pretrained(path), tokenize)

    def score(self, prompts: list[Text], completions: list[Text], batch_size: int = 64
              ) -> torch.Tensor:
        """r(x, y) for each (prompt, completion), float32 [N]."""
        return self.outputs(prompts, completions, batch_size)[:, 0]

    @torch.no_grad()
    def outputs(self, prompts: list[Text], completions: list[Text], batch_size: int = 64
                ) -> torch.Tensor:
        """Every output of the head for each (prompt, completion), float32 [N, outputs]."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        records = [Record(p, (c,), f"pair {i}", kind="unpaired")
                   for i, (p, c) in enumerate(zip(prompts, completions))]
        groups, _ = self.encoder.encode_all(records)
        device = next(self.model.parameters()).device
        scores = []
        for start in range(0, len(groups), batch_size):
            batch = collate_groups(groups[start:start + batch_size], self.tokenizer.pad_token_id)
            logits = self.model(input_ids=batch["input_ids"].to(device),
                                attention_mask=batch["attention_mask"].to(device)).logits
            scores.append(logits.float().cpu())
        return torch.cat(scores) if scores else torch.zeros(0, self.model.config.num_labels)
