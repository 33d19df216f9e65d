"""Each default is written in one place: the plugin's YAML files. The settings dataclasses read
theirs from there; the item_group and rerank blocks are documented in overall.yaml exactly as
their code fills them in; documenting them changes no run's resolved identity."""
import dataclasses
import os
import re

import pytest
import yaml

from conftest import REPO_ROOT

from recbole_bifair.evaluator import groups, rerank
from recbole_bifair.trainer.settings import HypergradientSettings, hypergradient_settings

BIFAIR_YAML = os.path.join(REPO_ROOT, "properties", "model", "BiFair.yaml")
OVERALL_YAML = os.path.join(REPO_ROOT, "properties", "overall.yaml")
FIELD_KEYS = {"mode": "hypergradient", "xi": "lookahead_lr", "beta": "proximity_weight", "steps": "lookahead_steps",
              "update": "lookahead_update", "truncate": "lookahead_truncate", "implicit_steps": "implicit_steps",
              "implicit_lr": "implicit_lr", "implicit_solver": "implicit_solver",
              "implicit_damping": "implicit_damping"}


def test_hypergradient_settings_default_to_the_yaml_and_to_a_default_run():
    with open(BIFAIR_YAML, encoding="utf-8") as f:
        written = yaml.safe_load(f)
    defaults = HypergradientSettings()
    assert {f.name for f in dataclasses.fields(HypergradientSettings)} == set(FIELD_KEYS)
    for field_name, key in FIELD_KEYS.items():
        assert getattr(defaults, field_name) == written[key], field_name
    assert (defaults.xi, defaults.beta) == (0.0, 0.001)  # the values the code once contradicted
    config = {**written, "learning_rate": 0.001, "learner": "adam"}
    assert hypergradient_settings(config) == defaults


def _documented_block(name):
    """``{key: value}`` of the commented ``#   key: value`` lines just above ``name: ~``."""
    lines = open(OVERALL_YAML, encoding="utf-8").read().splitlines()
    end = lines.index(f"{name}: ~")
    block = {}
    for line in reversed(lines[:end]):
        match = re.match(r"^#   (\w+): (\S+)", line)
        if not match:
            break
        block[match.group(1)] = yaml.safe_load(match.group(2))
    return block


@pytest.mark.parametrize("name, defaults", [("item_group", groups.DEFAULTS), ("rerank", rerank.DEFAULTS)])
def test_overall_yaml_documents_each_block_as_its_code_fills_it_in(name, defaults):
    assert _documented_block(name) == defaults


def test_documenting_item_group_keeps_every_runs_identity():
    """overall.yaml's ``item_group: ~`` is inert in a run's fingerprint (INERT_SETTINGS), so the
    runs recorded before it was written down are still reused; a set block is not."""
    from recbole_bifair.benchmark.spec import resolved_identity

    identity = resolved_identity("BiFairSASRec", "ml-100k", {"epochs": 1})["config"]
    assert "item_group" not in identity and "rerank" in identity
    own = resolved_identity("BiFairSASRec", "ml-100k", {"item_group": {"n_groups": 3}})["config"]
    assert own["item_group"] == {"n_groups": 3}
