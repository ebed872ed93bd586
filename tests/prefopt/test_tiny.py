"""The built-in tiny tokenizer and config: one token per character, a chat template whose
turns end in EOS, and a round trip through save_pretrained."""

from transformers import AutoTokenizer

from prefopt.tiny import build_config, build_tokenizer


def test_one_token_per_character_and_back():
    tokenizer = build_tokenizer()
    ids = tokenizer("sort 3 21\n", add_special_tokens=False)["input_ids"]
    assert len(ids) == len("sort 3 21\n")
    assert tokenizer.decode(ids) == "sort 3 21\n"
    assert tokenizer.unk_token_id not in ids
    assert tokenizer("é", add_special_tokens=False)["input_ids"] == [tokenizer.unk_token_id]


def test_the_chat_template_ends_every_turn_with_eos():
    tokenizer = build_tokenizer()
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "sort 21"}, {"role": "assistant", "content": "12"}],
        tokenize=False)
    assert text == "<s><|user|>sort 21<|end|><|assistant|>12<|end|>"
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                           add_generation_prompt=True)
    assert prompt == "<s><|user|>hi<|end|><|assistant|>"


def test_saved_and_loaded_like_a_hub_tokenizer(tmp_path):
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded("sort 21")["input_ids"] == tokenizer("sort 21")["input_ids"]
    assert loaded.chat_template == tokenizer.chat_template


def test_config_uses_the_tokenizers_ids():
    tokenizer = build_tokenizer()
    config = build_config(tokenizer, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1,
                          max_position_embeddings=32, tie_word_embeddings=True)
    assert config.vocab_size == len(tokenizer)
    assert (config.pad_token_id, config.eos_token_id) == (tokenizer.pad_token_id,
                                                          tokenizer.eos_token_id)
