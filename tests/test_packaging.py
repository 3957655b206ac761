"""The installed package carries its offline assets and imports without the network."""
import os
import subprocess
import sys
import zipfile

from conftest import REPO


def test_wheel_ships_the_embedded_tokenizer(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
                   check=True, capture_output=True)
    (wheel,) = tmp_path.glob("toxigs-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "toxigs/assets/embedded-tokenizer/tokenizer.json" in names
    assert {"toxigs/data.py", "toxigs/models.py", "toxigs/objectives.py"} <= set(names)
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    extras = {line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Provides-Extra:")}
    settings = (REPO / "settings.ini").read_text().splitlines()
    declared = {line.split("_requirements")[0] for line in settings if line.split("=")[0].strip().endswith("_requirements")}
    assert extras == declared == {"dev", "gemma", "attacks", "utility", "lora", "tracking"}, (extras, declared)  # every extra setup.py offers
    assert "Requires-Dist: lm-eval>=0.4.13; extra == \"utility\"" in metadata
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    for script in ("toxigs-train = toxigs.train:main", "toxigs-evaluate = toxigs.evaluate:main",
                   "toxigs-sweep = toxigs.sweep:main", "toxigs-models = toxigs.models:main"):
        assert script in entry_points, entry_points


def test_modules_import_and_embedded_world_loads_offline(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    code = ("import toxigs.data, toxigs.objectives; from toxigs.models import load_model, load_tokenizer; "
            "m = load_model('embedded'); t = load_tokenizer('embedded'); print(len(t), m.config.n_layer)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True, capture_output=True, text=True)
    assert out.stdout.split() == [str(len(__import__("toxigs.models").models.load_tokenizer("embedded"))), "2"]
