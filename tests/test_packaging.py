"""A non-editable install finds the property YAMLs; names resolve plugin-first with one clear
error for unknown names."""
import os
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO_ROOT
from recbole_bifair.errors import BiFairInputError
from recbole_bifair.utils import get_model, get_trainer


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), REPO_ROOT],
        check=True,
        cwd=str(out),
    )
    (path,) = [os.path.join(out, f) for f in os.listdir(out) if f.endswith(".whl")]
    return path


@pytest.mark.slow
def test_wheel_ships_the_properties(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for yaml_file in ["overall.yaml", "model/BiFair.yaml", "dataset/ml-100k.yaml"]:
        assert f"recbole_bifair/properties/{yaml_file}" in names


@pytest.mark.slow
def test_installed_package_reads_its_properties(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), wheel], check=True)
    script = (
        "import recbole_bifair.utils as u, os;"
        "from recbole_bifair.config import Config;"
        "c = Config(model='BiFairSASRec', dataset='ml-100k', config_dict={'state': 'WARNING'});"
        "print(os.path.relpath(u.properties_dir(), os.path.dirname(u.__file__)), c['hypergradient'], c['load_col']['item'][1])"
    )
    env = dict(os.environ, PYTHONPATH=str(site))
    out = subprocess.run([sys.executable, "-c", script], cwd=str(tmp_path), env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-3:] == ["properties", "first_order", "movie_title"]


def test_plugin_names_resolve_first_and_recbole_names_still_work():
    from recbole.model.sequential_recommender import SASRec

    assert get_model("SASRec") is SASRec
    bifair = get_model("BiFairSASRec")
    assert issubclass(bifair, SASRec) and bifair.__name__ == "BiFairSASRec" and bifair.bifair
    assert get_model("BiFairSASRec") is bifair
    assert not get_model("LLMSASRec").bifair
    assert get_trainer(None, "BiFairSASRec").__name__ == "BiFairTrainer"
    assert get_trainer(bifair.type, "LLMSASRec").__name__ == "Trainer"


def test_unknown_model_is_one_clear_error():
    with pytest.raises(BiFairInputError, match="Unknown model 'SASRecc'.*SASRec"):
        get_model("SASRecc")
    with pytest.raises(BiFairInputError, match="Unknown model 'BiFairNoSuch'"):
        get_model("BiFairNoSuch")
