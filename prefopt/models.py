"""Policy and reference models from transformers.

`model.name_or_path` names a local directory or a hub id of any causal LM; left empty, the
built-in tiny model (prefopt.tiny) is built from a config with random weights.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from typing import Optional

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
)

from prefopt import tiny


class ModelSourceError(ValueError):
    """`model.name_or_path` (or `model.tokenizer`) names neither a model folder nor a hub
    repository that can be reached; the message names the setting and the fix."""


class ModelSettingError(ValueError):
    """A setting the loaded model cannot serve (`model.lora.target_modules`,
    `data.max_length`); the message names the setting, the model's side and the fix."""


# A hub repository id: `name` or `owner/name`, of letters, digits, `-`, `_` and `.`.
_REPO_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
_MODEL_FILES = ("config.json",)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def check_source(setting: str, source: str, files: tuple[str, ...] = _MODEL_FILES) -> None:
    """Refuse a `source` that is a local path but no model folder (a missing path, a file,
    a folder without `files`) before transformers reads it as a hub id."""
    what = "model" if files == _MODEL_FILES else "tokenizer"
    if os.path.isdir(source):
        if not any(os.path.isfile(os.path.join(source, f)) for f in files):
            raise ModelSourceError(
                f"{setting}={source}: the folder is not a saved {what} (it holds none of "
                f"{', '.join(files)}); give the folder that save_pretrained wrote, e.g. a "
                "run's policy/")
        return
    if os.path.exists(source):
        raise ModelSourceError(f"{setting}={source}: is a file, not a {what} folder; give the "
                               "folder that save_pretrained wrote, or a hub id (owner/name)")
    looks_local = source.startswith(("/", ".", "~")) or source.count("/") > 1
    if looks_local or not _REPO_ID.match(source):
        raise ModelSourceError(
            f"{setting}={source}: is neither a local folder (no such path) nor a hub id "
            "(owner/name) that can be reached; give an existing model folder or a hub id")


def _unreachable(setting: str, source: str, exc: OSError) -> ModelSourceError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ModelSourceError(f"{setting}={source}: is neither a local folder nor reachable as a "
                            f"hub id ({first}); give an existing model folder, or check the "
                            "id and the network (HF_HUB_OFFLINE)")


@dataclass
class TinyModelConfig:
    """Shape of the built-in tiny Llama (used when `name_or_path` is empty)."""

    hidden_size: int = 64
    intermediate_size: int = 192
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 256
    tie_word_embeddings: bool = False


@dataclass
class LoraConfig:
    """LoRA adapters (peft). With r > 0 only the adapters train, and the reference model is
    the policy with its adapters disabled: one copy of the base weights, not two."""

    r: int = 0
    """Adapter rank; 0 trains all weights (no LoRA)."""
    alpha: float = 16.0
    dropout: float = 0.0
    """Adapter dropout; 0 keeps policy and reference log-probs equal at the start."""
    target_modules: Optional[list[str]] = None
    """Module names to adapt (a name matches a module of that name or ending in `.name`);
    empty, or `[all-linear]` (peft's keyword, passed on as the string "all-linear"): every
    linear layer but the output head. A model whose input embedding and output head share
    one matrix (tie_word_embeddings) refuses either of them as a target: training sees the
    adapter on that side only, while merging for export writes its change into the shared
    matrix, which changes both sides: the exported model would not be the trained one."""


@dataclass
class ModelConfig:
    name_or_path: Optional[str] = None
    """Local directory or hub id of a causal LM; empty: the built-in tiny model."""
    tokenizer: Optional[str] = None
    """Where to load the tokenizer from; empty: the same place as the model."""
    revision: Optional[str] = None
    """Hub revision (branch, tag or commit) when `name_or_path` is a hub id."""
    dtype: str = "float32"
    """Dtype of the loaded weights. Keep float32 for mixed precision (`trainer.precision`)."""
    trust_remote_code: bool = False
    attn_implementation: Optional[str] = "sdpa"
    gradient_checkpointing: bool = False
    """Recompute the trunk's activations in backward: less memory, about 30% more time."""
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)


def build_tokenizer(cfg: ModelConfig):
    source = cfg.tokenizer or cfg.name_or_path
    if not source:
        return tiny.build_tokenizer()
    setting = "model.tokenizer" if cfg.tokenizer else "model.name_or_path"
    check_source(setting, source, _TOKENIZER_FILES if cfg.tokenizer else _MODEL_FILES)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=cfg.revision,
                                                  trust_remote_code=cfg.trust_remote_code)
    except OSError as exc:
        raise _unreachable(setting, source, exc) from exc
    if tokenizer.pad_token is None:
        # Padding positions are masked out everywhere; any existing token will do.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_policy(cfg: ModelConfig, tokenizer, reward_head: bool = False, num_labels: int = 1
                 ) -> PreTrainedModel:
    """The model to train: a causal LM, or with `reward_head` a reward model (a sequence
    classifier read at the last non-padding token) with `num_labels` outputs: 1 for a
    scalar reward, one per attribute for an attribute model."""
    auto = AutoModelForSequenceClassification if reward_head else AutoModelForCausalLM
    head_kwargs = {"num_labels": num_labels} if reward_head else {}
    if cfg.name_or_path:
        check_source("model.name_or_path", cfg.name_or_path)
        try:
            model = auto.from_pretrained(
                cfg.name_or_path, revision=cfg.revision, dtype=getattr(torch, cfg.dtype),
                trust_remote_code=cfg.trust_remote_code,
                attn_implementation=cfg.attn_implementation, **head_kwargs)
        except OSError as exc:
            raise _unreachable("model.name_or_path", cfg.name_or_path, exc) from exc
    else:
        config = tiny.build_config(tokenizer, **vars(cfg.tiny))
        config._attn_implementation = cfg.attn_implementation
        for key, value in head_kwargs.items():
            setattr(config, key, value)
        model = auto.from_config(config, dtype=getattr(torch, cfg.dtype))
    if reward_head and model.config.pad_token_id is None:
        # The head reads the last token that is not padding; it must know which that is.
        model.config.pad_token_id = tokenizer.pad_token_id
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    disable_dropout(model)
    if cfg.lora.r > 0:
        model = add_lora(model, cfg.lora, reward_head)
    return model


def add_lora(model: PreTrainedModel, cfg: LoraConfig, reward_head: bool = False):
    import peft

    if cfg.r < 0:
        raise ValueError(f"model.lora.r must be >= 0, got {cfg.r}")
    targets = list(cfg.target_modules) if cfg.target_modules else ["all-linear"]
    _check_tied_targets(model, targets)
    config = peft.LoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
        # peft reads "all-linear" as a keyword only as a string; in a list it is a name.
        target_modules="all-linear" if targets == ["all-linear"] else targets,
        # A reward model's scalar head is new: it must train in full, not through adapters.
        task_type=peft.TaskType.SEQ_CLS if reward_head else peft.TaskType.CAUSAL_LM)
    try:
        return peft.get_peft_model(model, config)
    except ValueError as exc:
        # peft's NoMatchingPeftModuleError (a ValueError; older peft: a plain one) is a
        # traceback that names neither the setting nor the names that would match.
        no_match = type(exc).__name__ == "NoMatchingPeftModuleError"
        if not no_match and "not found in the base model" not in str(exc):
            raise
        raise ModelSettingError(
            f"model.lora.target_modules={targets}: no module of the model has such a name; "
            f"give names of its linear layers (e.g. {', '.join(_linear_names(model)[:8])}), "
            "or leave it empty for all of them") from exc


def _matches(name: str, target: str) -> bool:
    """peft's rule for a list of names: the full module name, or its last dotted parts."""
    return name == target or name.endswith("." + target)


def _linear_names(model: torch.nn.Module) -> list[str]:
    """The last parts of the linear layers' names, as target_modules takes them, in order."""
    from transformers.pytorch_utils import Conv1D  # GPT-2's linear layers

    names = [name.rsplit(".", 1)[-1] for name, module in model.named_modules()
             if name and isinstance(module, (torch.nn.Linear, Conv1D))]
    return list(dict.fromkeys(names))


def _check_tied_targets(model: PreTrainedModel, targets: list[str]) -> None:
    """Refuse adapters on an input embedding or output head that share one matrix: in
    training the adapter changes one side only (on the embedding the lookup, the head still
    reading the base matrix; on the head the logits), but merging writes its change into the
    shared matrix, which changes both: the exported policy/ is not the trained model."""
    inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
    if inputs is None or outputs is None:
        return
    weight_in, weight_out = getattr(inputs, "weight", None), getattr(outputs, "weight", None)
    if weight_in is None or weight_in is not weight_out:
        return
    for name, module in model.named_modules():
        if module is inputs or module is outputs:
            hits = [t for t in targets if _matches(name, t)]
            if hits:
                raise ModelSettingError(
                    f"model.lora.target_modules={targets}: {hits[0]} names {name}, which "
                    "shares its weight with the model's "
                    f"{'output head' if module is inputs else 'input embedding'} "
                    "(tie_word_embeddings): the merged export would differ from the trained "
                    f"model; leave {hits[0]} out, or load the model untied "
                    "(tie_word_embeddings=false)")


def position_limit(model) -> Optional[int]:
    """The longest sequence, in tokens, the model's positions serve; None when its config
    names no limit."""
    found = _position_setting(model)
    return found[0] if found else None


_POSITION_KEYS = ("max_position_embeddings", "n_positions", "n_ctx")


def _position_setting(model) -> Optional[tuple[int, str]]:
    """(the limit, the config attribute it comes from) or None. Rotary scaling (linear,
    yarn, ...) serves `factor` times the pre-training length, so the limit grows with it (a
    larger limit only refuses less); dynamic scaling stretches as far as the input: none."""
    config = base_model(model).config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    aliases = getattr(config, "attribute_map", {}) or {}
    for key in _POSITION_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            break
    else:
        return None
    limit, source = value, f"{aliases.get(key, key)}={value}"
    scaling = getattr(config, "rope_scaling", None) or getattr(config, "rope_parameters", None)
    if isinstance(scaling, dict):
        # Per attention type ({"full_attention": {...}, ...}) or one dict for all layers.
        for params in [v for v in scaling.values() if isinstance(v, dict)] or [scaling]:
            kind = params.get("rope_type", params.get("type")) or "default"
            factor = params.get("factor")
            if kind == "dynamic":
                return None
            if kind != "default" and isinstance(factor, (int, float)) and factor > 1:
                original = params.get("original_max_position_embeddings") or value
                scaled = int(max(value, original) * factor)
                if scaled > limit:
                    limit = scaled
                    source = f"{aliases.get(key, key)}={value} with {kind} rope scaling " \
                             f"by factor {factor}"
    return limit, source


def check_max_length(model, max_length: int) -> None:
    """Refuse a `data.max_length` past the positions of a model that looks them up in a
    table (GPT-2's n_positions rows): it would stop at the first long batch with an
    IndexError inside torch.embedding that names no setting. Rotary and ALiBi models
    compute positions and run past their config's limit, so they are not refused: the
    files preset's 1024 must still work with the built-in tiny model's 256."""
    found = _position_setting(model)
    if found and max_length > found[0] and _has_position_table(model, found[0]):
        limit, source = found
        raise ModelSettingError(
            f"data.max_length={max_length}: the model has {limit} positions (its config's "
            f"{source}); set data.max_length={limit} or lower")


def _has_position_table(model, limit: int) -> bool:
    """An embedding, other than the tokens', with a row per position (OPT-style tables
    keep 2 rows more for an offset)."""
    inputs = base_model(model).get_input_embeddings()
    return any(isinstance(m, torch.nn.Embedding) and m is not inputs
               and limit <= m.num_embeddings <= limit + 2
               for m in base_model(model).modules())


def uses_lora(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "get_base_model")


def base_model(model) -> PreTrainedModel:
    """The transformers model inside a peft wrapper (with its adapter layers), or `model`."""
    return model.get_base_model() if uses_lora(model) else model


def exportable(model) -> PreTrainedModel:
    """The model to save_pretrained: LoRA adapters merged into the base weights, so that
    plain transformers loads it. Merging changes `model` in place: call it last."""
    return model.merge_and_unload() if uses_lora(model) else model


def disable_dropout(model: torch.nn.Module) -> None:
    """Dropout off for good, whatever train()/eval() Lightning calls later.

    The policy's and the reference's log-probs of the same sequence must agree at the
    start; dropout would make the implicit rewards noisy and biased.
    """
    for name in dir(model.config):
        if "dropout" in name and isinstance(getattr(model.config, name, None), float):
            setattr(model.config, name, 0.0)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def make_reference(policy: PreTrainedModel) -> PreTrainedModel:
    """A frozen copy of the policy as it is now."""
    reference = copy.deepcopy(policy)
    reference.requires_grad_(False)
    reference.eval()
    return reference
