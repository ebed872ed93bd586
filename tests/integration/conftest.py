"""Fixtures shared by the integration tests."""

import pytest

QUIET = ["trainer.enable_progress_bar=false", "trainer.log_every_n_steps=50"]


@pytest.fixture(scope="session")
def warm_start(registered, tmp_path_factory):
    """The tiny policy after 150 SFT steps on the task's preferred answers: the warm start
    of the online tests, trained once per session and shared."""
    from hydra import compose, initialize_config_module

    from prefopt.training.train import train

    out = tmp_path_factory.mktemp("sft")
    with initialize_config_module(config_module="prefopt.conf", version_base="1.3"):
        cfg = compose("train", overrides=["objective=sft", "trainer.max_steps=150",
                                          f"output_dir={out}", *QUIET])
    train(cfg)
    return out / "policy"
