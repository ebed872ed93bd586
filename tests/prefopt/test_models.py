"""Models: the built-in tokenizer and tiny model, loading from a local path, the reference."""

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from prefopt.models import ModelConfig, build_policy, build_tokenizer, make_reference


def test_tiny_tokenizer_is_a_real_fast_tokenizer(tokenizer, tmp_path):
    from transformers import PreTrainedTokenizerFast

    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "sort 21"}],
                                         add_generation_prompt=True, tokenize=False)
    assert text == "<s><|user|>sort 21<|end|><|assistant|>"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == 11 and tokenizer.decode(ids) == text  # one token per character
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded(text, add_special_tokens=False)["input_ids"] == ids
    assert loaded.chat_template == tokenizer.chat_template


def test_dropout_disabled(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    from prefopt.models import disable_dropout

    model = LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16,
                                         num_hidden_layers=1, num_attention_heads=2,
                                         attention_dropout=0.3))
    model.lm_head = torch.nn.Sequential(torch.nn.Dropout(0.5), model.lm_head)
    disable_dropout(model)
    assert model.config.attention_dropout == 0.0
    assert model.lm_head[0].p == 0.0
    assert all(m.attention_dropout == 0.0 for m in model.modules()
               if hasattr(m, "attention_dropout"))


def test_reference_is_a_frozen_copy(tiny_model):
    reference = make_reference(tiny_model)
    assert all(not p.requires_grad for p in reference.parameters())
    for p, q in zip(tiny_model.parameters(), reference.parameters()):
        assert p.data_ptr() != q.data_ptr() and torch.equal(p, q)


def test_load_from_local_directory(tiny_model, tokenizer, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    cfg = ModelConfig(name_or_path=str(tmp_path))
    loaded = build_policy(cfg, build_tokenizer(cfg))
    ids = torch.tensor([[1, 5, 20, 21]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, tiny_model(ids).logits)
    assert isinstance(AutoModelForCausalLM.from_pretrained(tmp_path), type(tiny_model))


def test_a_source_that_is_no_model_is_refused_naming_it(tmp_path):
    import pytest as _pytest

    from prefopt.models import ModelConfig, ModelSourceError, build_policy, build_tokenizer

    missing = str(tmp_path / "nope")
    with _pytest.raises(ModelSourceError, match=r"model.name_or_path=.*nope: is neither a "
                                                r"local folder \(no such path\) nor a hub id"):
        build_tokenizer(ModelConfig(name_or_path=missing))
    with _pytest.raises(ModelSourceError, match="is neither a local folder"):
        build_policy(ModelConfig(name_or_path=missing), None)
    (tmp_path / "file.bin").write_text("x")
    with _pytest.raises(ModelSourceError, match=r"file.bin: is a file, not a model folder"):
        build_policy(ModelConfig(name_or_path=str(tmp_path / "file.bin")), None)
    with _pytest.raises(ModelSourceError, match=r"model.tokenizer=.*: the folder is not a "
                                                r"saved tokenizer"):
        build_tokenizer(ModelConfig(name_or_path=missing, tokenizer=str(tmp_path)))
