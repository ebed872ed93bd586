"""generate(): greedy decoding as an argmax loop would do it, samples per prompt, and the
requests it refuses (SteerLM steering: tests/integration/test_steering.py)."""

import pytest
import torch

from prefopt.data.tokenize import Encoder, TokenizeConfig
from prefopt.generate import GenerationConfig, generate, load_policy


def _argmax_loop(model, tokenizer, prompt, steps):
    """Greedy decoding written out: the prompt as training renders it, then one argmax
    token at a time, stopping at EOS."""
    ids = Encoder(tokenizer, TokenizeConfig(max_length=model.config.max_position_embeddings)
                  ).prompt_ids([prompt])[0]
    out = []
    for _ in range(steps):
        logits = model(input_ids=torch.tensor([ids + out])).logits[0, -1]
        token = int(logits.argmax())
        if token == tokenizer.eos_token_id:
            break
        out.append(token)
    return tokenizer.decode(out, skip_special_tokens=True)


def test_greedy_is_the_argmax_loop_and_left_padding_changes_nothing(tiny_model, tokenizer):
    tiny_model.eval()
    prompts = ["sort 321", "sort 9876543"]  # different lengths: the first is left-padded
    answers = generate(tiny_model, tokenizer, prompts, GenerationConfig(max_new_tokens=6))
    assert answers == [_argmax_loop(tiny_model, tokenizer, p, 6) for p in prompts]


def test_samples_per_prompt_come_consecutively(tiny_model, tokenizer):
    torch.manual_seed(0)
    answers = generate(tiny_model, tokenizer, ["sort 21", "sort 9"],
                       GenerationConfig(max_new_tokens=4, do_sample=True, num_samples=3))
    assert len(answers) == 6 and all(isinstance(a, str) for a in answers)


def test_attributes_need_a_steerlm_policy(tiny_model, tokenizer):
    with pytest.raises(ValueError, match="the policy has no attribute schema"):
        generate(tiny_model, tokenizer, ["sort 21"], attributes=[{"quality": 4}])


def test_load_policy_names_a_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model directory"):
        load_policy(str(tmp_path / "nowhere"))


@pytest.mark.parametrize("args,message", [
    (["--num-samples", "0"], "argument --num-samples: expected a whole number >= 1, got 0"),
    (["--top-p", "2"], "argument --top-p: expected a number in (0, 1], got 2"),
])
def test_cli_bad_sampling_option_is_one_argparse_line(tmp_path, capsys, args, message):
    from prefopt.generate import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), "--prompt", "sort 21", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"prefopt-generate: error: {message}"


def test_cli_attributes_on_a_policy_that_is_not_steerlm(tiny_model, tokenizer, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    policy = tmp_path / "policy"
    tiny_model.save_pretrained(policy)
    tokenizer.save_pretrained(policy)
    result = subprocess.run([str(Path(sys.executable).parent / "prefopt-generate"),
                             str(policy), "--prompt", "sort 21", "--attributes", "quality=4"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line == (f"prefopt-generate: error: --attributes: the policy {policy} has no "
                    "attribute schema (it was not trained with objective=steerlm); leave "
                    "--attributes out, or give a SteerLM policy")
