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

A file is trusted only if it is whole and the values are the reference's:
- each file stores the SHA-256 of its values; an unreadable file (truncated, say) or one
  whose values do not match it is recomputed, with a warning;
- before a cached file is used, the initial policy (which is the reference) scores the
  first records again: the sequence KL to the cached values must be ~0 on every one,
  else the file is refused and recomputed, with a warning naming the KL it would have
  trained against. This catches what the key cannot see (a local model directory whose
  files were replaced keeping their sizes and times, a cache copied from elsewhere).
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
from prefopt.data.output import write_atomically
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
    # format 2: the file holds {"values", "sha256"} (format 1: the bare values)
    payload = json.dumps({"model": model_identity(model_cfg, seed),
                          "tokenizer": tokenizer_identity(tokenizer),
                          "data": data_digest(groups), "format": 2},
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


# Sampled to check a cache: the first records, as one batch of `compute` scores them.
CHECK_RECORDS = 32
# |Σ log π − Σ log π_ref| allowed per completion token when π is the reference: float32
# agrees to ~1e-6 a token, bf16 across devices to ~1e-2.
CHECK_TOLERANCE = 0.05


def checksum(values: list[list[float]]) -> str:
    return hashlib.sha256(json.dumps(values).encode()).hexdigest()


def save(path: Path, values: list[list[float]]) -> None:
    """Write `values` and their checksum to `path` atomically: a killed run never leaves a
    half-written cache in place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda f: torch.save({"values": values, "sha256": checksum(values)},
                                                f))


def load(path: Path, groups: list[EncodedGroup]) -> tuple[list[list[float]] | None, str]:
    """(values, "") from a whole file that fits `groups`, else (None, why not)."""
    try:
        stored = torch.load(path, weights_only=True)
    except Exception as exc:  # truncated, or not a cache file at all
        reason = (str(exc).splitlines() or [""])[0].split(". ")[0]
        return None, f"cannot be read ({type(exc).__name__}: {reason})"
    if not isinstance(stored, dict) or "values" not in stored or "sha256" not in stored:
        return None, "is not a cache file of this prefopt version"
    values = stored["values"]
    if checksum(values) != stored["sha256"]:
        return None, "does not match its checksum"
    if len(values) != len(groups) or any(len(v) != len(g.completions)
                                         for v, g in zip(values, groups)):
        return None, "does not match the data"
    return values, ""


def disagreement(policy, groups: list[EncodedGroup], values: list[list[float]], pad_id: int,
                 impl: str = "auto") -> tuple[float, float]:
    """(KL, worst per-token gap) between `policy` and cached `values` on the first
    CHECK_RECORDS groups: the mean of Σ log π − Σ log π_ref over their completions (what
    `kl` logs), and the largest |difference| divided by its completion's length. `policy`
    must be the reference (the initial policy; with LoRA its adapters are disabled)."""
    sample = groups[:CHECK_RECORDS]
    was_training = policy.training
    policy.eval()
    try:
        fresh = compute(policy, sample, pad_id, batch_size=CHECK_RECORDS, impl=impl)
    finally:
        policy.train(was_training)
    gaps = [(new - old, len(completion))
            for group, row_new, row_old in zip(sample, fresh, values)
            for completion, new, old in zip(group.completions, row_new, row_old)]
    kl = sum(gap for gap, _ in gaps) / max(len(gaps), 1)
    worst = max((abs(gap) / max(length, 1) for gap, length in gaps), default=0.0)
    return kl, worst


def load_or_compute(path: Path, groups: list[EncodedGroup], make_reference, pad_id: int,
                    impl: str = "auto", policy=None) -> tuple[list[list[float]], bool]:
    """(values, reused). `make_reference()` is called only when the cache is missing or
    refused. With `policy` (the initial policy, equal to the reference), a cached file is
    used only if `disagreement` finds the policy's log-probs equal to it."""
    if path.exists():
        values, problem = load(path, groups)
        if values is not None and policy is not None:
            kl, worst = disagreement(policy, groups, values, pad_id, impl=impl)
            if worst > CHECK_TOLERANCE:
                values, problem = None, (
                    f"holds log-probs of another model: the initial policy, which is the "
                    f"reference, has KL {kl:.4g} to them on the first records where it "
                    "must be 0")
        if values is not None:
            log.info("reference log-probs: reusing %s", path)
            return values, True
        log.warning("reference cache %s %s; recomputing it", path, problem)
    log.info("reference log-probs: computing %d records into %s", len(groups), path)
    values = compute(make_reference(), groups, pad_id, impl=impl)
    save(path, values)
    return values, False
