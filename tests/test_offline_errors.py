"""Offline, hub names fail with a message that says what to use instead (never a deep traceback)."""
import os
import subprocess
import sys

OFFLINE = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=OFFLINE, capture_output=True, text=True, timeout=300)


def test_toxigen_hub_dataset_offline_names_the_alternatives():
    out = run_python("from toxigs.data import load_records; load_records('toxigen')")
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError: could not load the dataset 'toxigen/toxigen-data'")
    assert "data='embedded'" in last


def test_hub_model_offline_names_the_alternatives():
    out = run_python("from toxigs.models import load_model; load_model('gpt2')")
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError: could not load the model 'gpt2'")
    assert "model='embedded'" in last
