"""Two real-world tokenizer families, built locally (nothing downloaded): a byte-level BPE
with a ChatML template (Qwen2 style) and a SentencePiece-style BPE (Metaspace `▁`, byte
fallback) with the Mistral `[INST]` template. Each is trained on a small fixed corpus with
the `tokenizers` library and wrapped in the transformers class of its family, so the
transformers code paths (pre-tokenizer, special tokens, BOS) are the ones real models use."""

from __future__ import annotations

import json

import pytest

CORPUS = [
    "Thank you for asking. The sky is blue because air scatters blue light.",
    "What colour is the sky? Why is the sea blue? Thank you!",
    "Sort the numbers 3 2 1. The sorted numbers are 1 2 3.",
    "Name a fruit. An apple is a fruit, and so is a pear.",
    "Be brief. You are a helpful assistant. Hello there, how are you?",
    "I do not know. Thanks, that helps. The answer is no.",
] * 4

# Qwen2's chat template, reduced to the turns (no tools).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Mistral's instruct template (v3 tokenizers: [INST] and [/INST] are control tokens).
INST_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% endif %}"
    "{% endfor %}"
)


def _train_bpe(pre_tokenizer, vocab_size: int, alphabet: list[str]) -> tuple[dict, list]:
    """(vocab, merges) of a BPE trained on CORPUS."""
    from tokenizers import Tokenizer, models, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=alphabet,
                                  show_progress=False)
    backend.train_from_iterator(CORPUS, trainer)
    model = json.loads(backend.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return model["vocab"], merges


@pytest.fixture(scope="session")
def chatml_tokenizer():
    """Byte-level BPE (Qwen2 pre-tokenizer) with ChatML turns; EOS <|im_end|>."""
    from tokenizers import pre_tokenizers
    from transformers import Qwen2Tokenizer

    vocab, merges = _train_bpe(pre_tokenizers.ByteLevel(add_prefix_space=False), 300,
                               pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<|endoftext|>": 0, **{t: i + 1 for t, i in vocab.items()}}
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, eos_token="<|im_end|>",
                               pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


@pytest.fixture(scope="session")
def inst_tokenizer():
    """SentencePiece-style BPE (Metaspace `▁`, byte fallback: LlamaTokenizerFast) with the
    Mistral [INST] template; BOS <s>, EOS </s>, and <unk> as padding."""
    from tokenizers import pre_tokenizers
    from transformers import LlamaTokenizerFast

    trained, merges = _train_bpe(pre_tokenizers.Metaspace(replacement="▁",
                                                          prepend_scheme="always"), 260, [])
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *trained]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    tokenizer = LlamaTokenizerFast(vocab=vocab, merges=merges, add_bos_token=True)
    tokenizer.add_special_tokens({"additional_special_tokens": ["[INST]", "[/INST]"],
                                  "pad_token": "<unk>"})
    tokenizer.chat_template = INST_TEMPLATE
    return tokenizer


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    """Byte-level BPE in GPT-2's shape: one token, <|endoftext|>, is unknown, BOS and EOS
    at once; no chat template, no BOS added, no padding token."""
    from tokenizers import pre_tokenizers
    from transformers import GPT2TokenizerFast

    vocab, merges = _train_bpe(pre_tokenizers.ByteLevel(add_prefix_space=False), 300,
                               pre_tokenizers.ByteLevel.alphabet())
    vocab = {**vocab, "<|endoftext|>": len(vocab)}
    return GPT2TokenizerFast(vocab=vocab, merges=merges, unk_token="<|endoftext|>",
                             bos_token="<|endoftext|>", eos_token="<|endoftext|>")
