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


# -- refusals: LoRA targets the model cannot serve, data.max_length past its positions ----

def _tiny_llama(tie: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16,
                                        num_hidden_layers=1, num_attention_heads=2,
                                        num_key_value_heads=1, tie_word_embeddings=tie))


def test_lora_on_a_tied_embedding_or_head_is_refused_naming_the_module():
    import pytest as _pytest

    from prefopt.models import LoraConfig, ModelSettingError, add_lora

    with _pytest.raises(ModelSettingError, match=(
            r"^model.lora.target_modules=\['q_proj', 'v_proj', 'embed_tokens'\]: "
            r"embed_tokens names model.embed_tokens, which shares its weight with the "
            r"model's output head \(tie_word_embeddings\).*leave embed_tokens out, or load "
            r"the model untied")):
        add_lora(_tiny_llama(tie=True),
                 LoraConfig(r=2, target_modules=["q_proj", "v_proj", "embed_tokens"]))
    with _pytest.raises(ModelSettingError, match=r"lm_head names lm_head, which shares its "
                                                 r"weight with the model's input embedding"):
        add_lora(_tiny_llama(tie=True), LoraConfig(r=2, target_modules=["q_proj", "lm_head"]))
    # Untied, each matrix is its own: both are fine targets; tied, the default is too.
    names = [n for n, _ in add_lora(_tiny_llama(tie=False), LoraConfig(
        r=2, target_modules=["embed_tokens", "lm_head"])).named_modules()]
    assert any(n.endswith("embed_tokens.lora_embedding_A") for n in names)
    assert any(n.endswith("lm_head.lora_A") for n in names)
    add_lora(_tiny_llama(tie=True), LoraConfig(r=2))


def test_lora_on_the_tied_tiny_model_is_refused_by_build_policy(tokenizer):
    import pytest as _pytest

    from prefopt.models import LoraConfig, ModelSettingError, TinyModelConfig

    cfg = ModelConfig(tiny=TinyModelConfig(tie_word_embeddings=True),
                      lora=LoraConfig(r=2, target_modules=["q_proj", "model.embed_tokens"]))
    with _pytest.raises(ModelSettingError, match="model.embed_tokens names model.embed_tokens"):
        build_policy(cfg, tokenizer)


def test_lora_targets_that_match_nothing_are_refused_naming_linear_layers():
    import pytest as _pytest

    from prefopt.models import LoraConfig, ModelSettingError, add_lora

    with _pytest.raises(ModelSettingError, match=(
            r"^model.lora.target_modules=\['qproj'\]: no module of the model has such a "
            r"name; give names of its linear layers \(e.g. q_proj, k_proj, v_proj, o_proj, "
            r"gate_proj, up_proj, down_proj, lm_head\), or leave it empty")):
        add_lora(_tiny_llama(tie=False), LoraConfig(r=2, target_modules=["qproj"]))


def test_lora_all_linear_in_a_list_is_peft_keyword():
    from prefopt.models import LoraConfig, add_lora

    def adapted(targets):
        model = add_lora(_tiny_llama(tie=False), LoraConfig(r=2, target_modules=targets))
        return sorted(n.rsplit(".", 2)[-2] for n, _ in model.named_modules()
                      if n.endswith(".lora_A"))

    expected = sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                       "down_proj"])  # every linear layer of the one block, not lm_head
    assert adapted(["all-linear"]) == expected
    assert adapted(None) == expected


def _tiny_gpt2(n_positions: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=16, n_positions=n_positions, n_embd=8,
                                      n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0))


def test_max_length_past_a_position_table_is_refused():
    import pytest as _pytest

    from prefopt.models import ModelSettingError, check_max_length, position_limit

    model = _tiny_gpt2(n_positions=16)
    assert position_limit(model) == 16
    with _pytest.raises(ModelSettingError, match=(
            r"^data.max_length=32: the model has 16 positions \(its config's "
            r"n_positions=16\); set data.max_length=16 or lower$")):
        check_max_length(model, 32)
    check_max_length(model, 16)
    with _pytest.raises(IndexError):  # what training would have met instead
        model(torch.zeros(1, 17, dtype=torch.long))


def test_position_limit_reads_the_config_and_rope_scaling():
    import types

    from transformers import GPT2Config, LlamaConfig, PretrainedConfig

    from prefopt.models import check_max_length, position_limit

    def limit(config):
        return position_limit(types.SimpleNamespace(config=config))

    assert limit(LlamaConfig(max_position_embeddings=256)) == 256
    assert limit(GPT2Config(n_positions=16)) == 16
    assert limit(PretrainedConfig()) is None
    # yarn by 4 over 256 positions serves 1024; dynamic scaling stretches without a limit.
    assert limit(LlamaConfig(max_position_embeddings=256, rope_scaling={
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256})) == 1024
    assert limit(LlamaConfig(max_position_embeddings=256, rope_scaling={
        "rope_type": "dynamic", "factor": 2.0})) is None
    # Rotary positions are computed, not looked up: past the limit they run, unrefused.
    check_max_length(_tiny_llama(tie=False), 10 ** 6)


def test_a_run_refuses_max_length_past_the_models_positions(compose, tokenizer, tmp_path):
    import pytest as _pytest
    from transformers import GPT2Config, GPT2LMHeadModel

    from prefopt import api
    from prefopt.models import ModelSettingError
    from prefopt.training.train import build

    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=16, n_embd=8,
                               n_layer=1, n_head=2)).save_pretrained(tmp_path / "gpt2")
    tokenizer.save_pretrained(tmp_path / "gpt2")
    model = ["model=hf", f"model.name_or_path={tmp_path / 'gpt2'}"]
    with _pytest.raises(ModelSettingError, match=r"^data.max_length=32: the model has 16 "):
        build(compose(*model, "data.max_length=32"))
    assert issubclass(ModelSettingError, api.USER_ERRORS)  # prefopt-train: one line
    build(compose(*model, "data.max_length=16"))
