"""The built-in tiny model: a character-level tokenizer with a chat template, and a small
Llama-architecture config. Random weights, built locally: nothing is ever downloaded.

The tokenizer is a real `PreTrainedTokenizerFast` (a `tokenizers` WordLevel model over the
printable ASCII characters), so it saves with `save_pretrained` and loads back with
`AutoTokenizer.from_pretrained` like any hub tokenizer.
"""

from __future__ import annotations

import string

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<s>", "<|end|>", "<unk>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")

# Zephyr-style turns; every turn ends with EOS, so a completion ends where generation stops.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    specials = [PAD, BOS, EOS, UNK, *ROLE_TOKENS]
    # ASCII 32..126 and the newline (multi-line text; SteerLM's attribute line ends in one).
    characters = [c for c in string.printable if c.isprintable()] + ["\n"]
    vocab = {token: i for i, token in enumerate(specials + characters)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")  # one token per character
    backend.decoder = decoders.Fuse()  # join characters back without spaces
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=BOS, eos_token=EOS,
                                        pad_token=PAD, unk_token=UNK,
                                        additional_special_tokens=list(ROLE_TOKENS))
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_config(tokenizer, *, hidden_size: int, intermediate_size: int, num_hidden_layers: int,
                 num_attention_heads: int, num_key_value_heads: int,
                 max_position_embeddings: int, tie_word_embeddings: bool) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads, max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        attention_dropout=0.0)
