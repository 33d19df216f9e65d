"""Shared helpers: the bundled tiny dataset (tests/test_data/tiny) and small-model settings."""
import os
import sys
import tempfile

import pytest

TEST_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "test_data")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# RecBole's Config reads every --key=value of sys.argv: keep pytest's own options out of it.
sys.argv = sys.argv[:1]

# The tests use RecBole's own classes beside the plugin's runner: apply the plugin's changes to
# RecBole once, as its Config does (test_compat checks that importing the package alone does not).
from recbole_bifair.trainer import recbole_changes  # noqa: E402

recbole_changes.apply()

# The user's cache of LLM item vectors is never read or written by the tests (nor by the runs
# they start, which inherit the environment).
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="recbole_bifair_tests_cache_")


def tiny_config(tmp_path, **overrides):
    """A config_dict for fast runs of sequential models on the tiny dataset."""
    config = {
        "data_path": TEST_DATA,
        "load_col": None,
        "epochs": 1,
        "train_batch_size": 256,
        "eval_batch_size": 256,
        "MAX_ITEM_LIST_LENGTH": 10,
        "hidden_size": 16,
        "inner_size": 32,
        "embedding_size": 16,
        "n_layers": 1,
        "n_heads": 1,
        "show_progress": False,
        "save_dataset": False,
        "save_dataloaders": False,
        "checkpoint_dir": str(tmp_path / "saved"),
        "log_wandb": False,
        "state": "WARNING",
        "seed": 2020,
        "reproducibility": True,
        "llm_emb_cache_dir": str(tmp_path / "emb_cache"),
    }
    config.update(overrides)
    return config


@pytest.fixture(scope="session")
def embedding_cache(tmp_path_factory):
    """One cache of encoded item texts for the whole session (encoding is tested on its own)."""
    return str(tmp_path_factory.mktemp("emb_cache"))


@pytest.fixture
def tiny(tmp_path, embedding_cache):
    """Builds (config, train_data, valid_data, test_data, model, trainer) on the tiny dataset."""
    from recbole.utils import init_seed

    from recbole_bifair.config import Config
    from recbole_bifair.quick_start import prepare_run

    def build(model="BiFairSASRec", **overrides):
        overrides.setdefault("llm_emb_cache_dir", embedding_cache)
        config = Config(model=model, dataset="tiny", config_dict=tiny_config(tmp_path, **overrides))
        init_seed(config["seed"], config["reproducibility"])
        _, train_data, valid_data, test_data, built_model, trainer = prepare_run(config)
        return config, train_data, valid_data, test_data, built_model, trainer

    return build
