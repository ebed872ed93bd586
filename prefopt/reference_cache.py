"""Reference log-probs computed once, stored on disk, reused while nothing they depend on
changes: `prefopt-train reference=cached`.

The key hashes what a reference log-prob depends on:
- the reference model: its name or path and revision and, for a local directory, the
  size and modification time of its files; for the built-in tiny model, its shape, the
  seed it is initialised from, and the transformers version;
- the tokenizer (its full serialisation) and chat template;
- the data and the truncation settings, exactly: the hash covers every encoded token id
  of every record, prompt and completions, after all rules were applied.
Change any of these and the key changes, so stale values are never used. Training with
a cached reference never builds the reference model once the cache exists.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
import transformers

from prefopt.data.collate import ROW_KEYS, collate_groups
from prefopt.data.tokenize import EncodedGroup
from prefopt.logprobs import completion_logps
from prefopt.models import ModelConfig, uses_lora

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    return Path(os.environ.get("PREFOPT_CACHE_DIR", Path.home() / ".cache" / "prefopt"))


def model_identity(cfg: ModelConfig, seed: int) -> dict:
    if cfg.name_or_path is None:
        return {"tiny": vars(cfg.tiny), "seed": seed, "dtype": cfg.dtype,
                "transformers": transformers.__version__}
    identity = {"name_or_path": cfg.name_or_path, "revision": cfg.revision, "dtype": cfg.dtype}
    path = Path(cfg.name_or_path)
    if path.is_dir():
        identity["files"] = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns)
                                   for p in path.iterdir() if p.is_file())
    return identity


def tokenizer_identity(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(),
                                                                   sort_keys=True)
    template = getattr(tokenizer, "chat_template", None) or ""
    return hashlib.sha256((text + "\0" + template).encode()).hexdigest()


def data_digest(groups: list[EncodedGroup]) -> str:
    digest = hashlib.sha256()
    for group in groups:
        for ids in (group.prompt, *group.completions):
            digest.update(np.asarray(ids, dtype=np.int64).tobytes())
            digest.update(b"|")
        digest.update(b"#")
    return digest.hexdigest()


def cache_key(model_cfg: ModelConfig, seed: int, tokenizer, groups: list[EncodedGroup]) -> str:
    payload = json.dumps({"model": model_identity(model_cfg, seed),
                          "tokenizer": tokenizer_identity(tokenizer),
                          "data": data_digest(groups), "format": 1},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


@torch.no_grad()
def compute(reference, groups: list[EncodedGroup], pad_id: int, batch_size: int = 32,
            impl: str = "auto") -> list[list[float]]:
    """Σ log π_ref over each completion of each group, in order."""
    device = next(reference.parameters()).device
    values: list[list[float]] = []
    for start in range(0, len(groups), batch_size):
        chunk = groups[start:start + batch_size]
        batch = collate_groups(chunk, pad_id)
        rows = {k: batch[k].to(device) for k in ROW_KEYS}
        if uses_lora(reference):  # the reference is the base: adapters off
            with reference.disable_adapter():
                logps = completion_logps(reference, rows, impl=impl).logps.cpu()
        else:
            logps = completion_logps(reference, rows, impl=impl).logps.cpu()
        offset = 0
        for group in chunk:
            n = len(group.completions)
            values.append(logps[offset:offset + n].tolist())
            offset += n
    return values


def load_or_compute(path: Path, groups: list[EncodedGroup], make_reference, pad_id: int,
                    impl: str = "auto") -> tuple[list[list[float]], bool]:
    """(values, reused). `make_reference()` is called only when the cache is missing."""
    if path.exists():
        values = torch.load(path, weights_only=True)
        if len(values) == len(groups):
            log.info("reference log-probs: reusing %s", path)
            return values, True
        log.warning("reference cache %s does not match the data; recomputing", path)
    log.info("reference log-probs: computing %d records into %s", len(groups), path)
    values = compute(make_reference(), groups, pad_id, impl=impl)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save(values, partial)
    partial.replace(path)  # atomic: a killed run never leaves a half-written cache
    return values, False
