"""prefopt's tokens and first-step log-probs equal TRL 1.16's DPOTrainer's.

TRL's side is TRL's own code: its DPOTrainer tokenises the dataset (`_prepare_dataset`),
its collator pads the pairs and its `compute_loss` runs the concatenated forward, whose
logged `logps/chosen` and `logps/rejected` (one record per batch) are the summed completion
log-probs of the policy. prefopt's side is Encoder -> collate_groups -> completion_logps
on the same weights. Two tokenizer families (tests/prefopt/data/conftest.py): byte-level
BPE with ChatML (Qwen2) and SentencePiece-style BPE with Mistral's [INST] template (Llama).
"""

from __future__ import annotations

import copy

import pytest
import torch

from prefopt.data.collate import collate_groups
from prefopt.data.records import pairwise_record
from prefopt.data.tokenize import Encoder, TokenizeConfig
from prefopt.logprobs import completion_logps

trl = pytest.importorskip("trl")

# (prompt, chosen, rejected). Short completions: a random model gives each token about
# -log(vocabulary) = -6 nats, and a float32 sum keeps 1e-5 only while it stays under ~64.
TEXTS = [
    ("Why is the sky blue?", "Thank you.", "No."),
    ("Sort the numbers 3 2 1.", "1 2 3.", "3 2 1"),
    ("What colour is the café sky?", "blue.", "the sea."),
]


def conversational(prompt, chosen, rejected):
    return ([{"role": "user", "content": prompt}], [{"role": "assistant", "content": chosen}],
            [{"role": "assistant", "content": rejected}])


def plain(prompt, chosen, rejected):
    """TRL's standard format: the completion starts with the space that separates it. The
    last record puts the space at the end of the prompt instead: both pre-tokenizers join a
    space to the word after it, so the prompt's final token merges into the completion."""
    if prompt.startswith("What"):
        return prompt + " ", chosen, rejected
    return prompt, " " + chosen, " " + rejected


def tiny_model(family: str, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    config_class, model_class = {"chatml": (Qwen2Config, Qwen2ForCausalLM),
                                 "inst": (LlamaConfig, LlamaForCausalLM)}[family]
    config = config_class(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
                          eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    return model_class(config).eval()


def trl_side(model, tokenizer, rows, tmp_path):
    """TRL's tokenised records, and Σ log π of chosen, rejected, chosen, ... per record."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=1, report_to=[],
                     use_cpu=True, max_length=None, disable_tqdm=True, save_strategy="no")
    dataset = Dataset.from_dict({key: [row[i] for row in rows]
                                 for i, key in enumerate(("prompt", "chosen", "rejected"))})
    trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=args,
                         train_dataset=dataset, processing_class=tokenizer)
    tokens = [(r["prompt_ids"], r["chosen_ids"], r["rejected_ids"])
              for r in trainer.train_dataset]
    with torch.no_grad():
        for row in trainer.train_dataset:
            trainer.compute_loss(model, trainer.data_collator([row]))
    metrics = trainer._metrics["eval"]  # the model is in eval mode: no dropout either side
    return tokens, [v for pair in zip(metrics["logps/chosen"], metrics["logps/rejected"])
                    for v in pair]


def prefopt_side(model, tokenizer, rows, **cfg):
    records = [pairwise_record(*row, where=f"t.jsonl:{i + 1}") for i, row in enumerate(rows)]
    groups, report = Encoder(tokenizer, TokenizeConfig(max_length=256, **cfg)).encode_all(records)
    assert report.kept == len(rows)
    # Only the plain record whose prompt ends in a space merges across the boundary.
    assert report.prompt_boundary_merges == (not cfg["chat_template"])
    with torch.no_grad():
        logps = completion_logps(model, collate_groups(groups, tokenizer.pad_token_id)).logps
    tokens = [(g.prompt, g.chosen, g.rejected) for g in groups]
    return tokens, logps.tolist()  # rows: chosen, rejected of each record in turn


@pytest.mark.slow
@pytest.mark.parametrize("family", ["chatml", "inst"])
@pytest.mark.parametrize("form", ["conversational", "plain"])
def test_tokens_and_logps_equal_trl(family, form, request, tmp_path):
    tokenizer = request.getfixturevalue(f"{family}_tokenizer")
    rows = [{"conversational": conversational, "plain": plain}[form](*t) for t in TEXTS]
    model = tiny_model(family, tokenizer)
    trl_tokens, trl_logps = trl_side(model, tokenizer, rows, tmp_path)
    # TRL templates message records only: string records match with chat_template=false.
    ours, our_logps = prefopt_side(model, tokenizer, rows, chat_template=form != "plain")
    assert ours == trl_tokens
    assert our_logps == pytest.approx(trl_logps, abs=1e-5, rel=0)


def test_separate_completion_tokens_differ_after_inst(inst_tokenizer):
    """After the [/INST] control token the whole conversation tokenises `Thank` without
    the word-start marker; tokenised alone, the completion starts a text and gets `▁Thank`."""
    record = pairwise_record(*conversational(*TEXTS[0]), where="t.jsonl:1")

    def chosen(mode):
        encoder = Encoder(inst_tokenizer, TokenizeConfig(max_length=256, completion_tokens=mode))
        (group,), _ = encoder.encode_all([record])
        return group

    joint, separate = chosen("joint"), chosen("separate")
    assert joint.prompt == separate.prompt
    assert inst_tokenizer.convert_ids_to_tokens(separate.chosen)[0] == "▁Thank"
    assert not inst_tokenizer.convert_ids_to_tokens(joint.chosen)[0].startswith("▁")
    # The whole conversation's tokens are the joint split's, by definition of the rule.
    whole = inst_tokenizer.apply_chat_template(record.prompt + record.chosen, tokenize=True,
                                               return_dict=True)["input_ids"]
    assert joint.prompt + joint.chosen == whole
    assert separate.prompt + separate.chosen != whole
    # Both decode to the same text: only the token boundaries differ.
    assert inst_tokenizer.decode(joint.chosen) == inst_tokenizer.decode(separate.chosen)
