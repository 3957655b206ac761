"""The papermill notebooks expose exactly what the code declares: every TrainConfig field, every
evaluate_run argument; a value given with -p reaches the run, and an unknown -p name stops the notebook."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from toxigs.evaluate import evaluate_run
from toxigs.parameters import notebook_parameters, parameter_names, parameters_cell
from toxigs.train import TrainConfig

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = {  # notebook: (what it exposes, its own defaults)
    "train.ipynb": (TrainConfig, {"eval_every": 5, "keep_best": "toxicity"}),
    "evaluate.ipynb": (evaluate_run, {"run_dir": "runs/embedded/idkdpo_pcgrad-seed0"}),
}


def papermill(notebook: str, out: Path, *parameters: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "papermill", str(REPO / "nbs" / notebook), str(out), *parameters]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_the_parameters_cell_is_the_code(notebook):
    exposed, defaults = NOTEBOOKS[notebook]
    fix = (f"regenerate it: toxigs.parameters.write_parameters_cell('nbs/{notebook}', "
           f"{exposed.__name__}, defaults={defaults})")
    assert notebook_parameters(REPO / "nbs" / notebook) == parameters_cell(exposed, defaults=defaults), fix


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    "A SimNPO run trained by the notebook with -p delta 0.5."
    folder = tmp_path_factory.mktemp("notebook")
    out = papermill("train.ipynb", folder / "train.ipynb", "-p", "run_dir", str(folder / "runs"), "-p", "method", "simnpo",
                    "-p", "delta", "0.5", "-p", "steps", "2", "-p", "base_steps", "5")
    assert out.returncode == 0, out.stderr[-3000:]
    return folder / "runs" / "simnpo-seed0"


def test_a_training_parameter_given_with_p_reaches_the_run(trained):
    config = json.loads((trained / "config.json").read_text())
    assert config["delta"] == 0.5 and config["method"] == "simnpo" and config["steps"] == 2
    assert set(parameter_names(TrainConfig)) <= set(config)


def test_an_unknown_training_parameter_stops_the_notebook_before_any_work(tmp_path):
    out = papermill("train.ipynb", tmp_path / "train.ipynb", "-p", "run_dir", str(tmp_path / "runs"), "-p", "deltaa", "0.5")
    assert out.returncode != 0
    assert "unknown parameter deltaa; the parameters of this notebook are: method, model, data" in out.stderr
    assert "delta" in out.stderr.split("the parameters of this notebook are:")[1]
    assert not (tmp_path / "runs").exists()


def test_evaluation_parameters_reach_evaluate_run_and_unknown_ones_stop_it(trained, tmp_path):
    out = papermill("evaluate.ipynb", tmp_path / "evaluate.ipynb", "-p", "run_dir", str(trained), "-p", "k", "2",
                    "-p", "n_prompts", "3", "-p", "max_documents", "None", "-p", "device", "cpu")
    assert out.returncode == 0, out.stderr[-3000:]
    settings = json.loads((trained / "results.json").read_text())["settings"]
    assert (settings["k"], settings["n_prompts"]) == (2, 3)
    bad = papermill("evaluate.ipynb", tmp_path / "bad.ipynb", "-p", "run_dir", str(trained), "-p", "kk", "2")
    assert bad.returncode != 0
    assert "unknown parameter kk; the parameters of this notebook are: run_dir, scorer, k," in bad.stderr
