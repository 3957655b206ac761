"""The house rules a reader relies on: which module may import which, and exported lines within 100 columns."""
import ast
import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def toxigs_imports(module: str) -> set[str]:
    "The toxigs modules that `toxigs/<module>.py` imports, at any depth (relative or absolute)."
    tree = ast.parse((REPO / "toxigs" / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level > 0: found.add(node.module or "toxigs")
            elif node.module and node.module.split(".")[0] == "toxigs": found.add(node.module.split(".", 1)[-1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".", 1)[-1] for a in node.names if a.name.split(".")[0] == "toxigs"}
    return found


def test_distributed_knows_torch_not_toxigs():
    assert toxigs_imports("distributed") == set()
    assert toxigs_imports("fused") == set()  # the surgery's kernel: torch only
    assert toxigs_imports("checks") == set() and toxigs_imports("parameters") == set()


def test_evaluation_and_analysis_do_not_import_training():
    assert "train" not in toxigs_imports("evaluate")
    assert "train" not in toxigs_imports("analysis")
    assert toxigs_imports("runs") <= {"toxigs", "objectives", "surgery"}  # the run directory's names, no training


def test_ci_refuses_an_exported_line_over_100_columns(tmp_path):
    checker = [sys.executable, str(REPO / ".ci" / "long_lines.py")]
    assert subprocess.run(checker + [str(REPO / "toxigs")], capture_output=True).returncode == 0
    (tmp_path / "module.py").write_text('__all__ = ["' + "x" * 120 + '"]\n' + "ok = 1\n")
    assert subprocess.run(checker + [str(tmp_path)], capture_output=True).returncode == 0  # nbdev's __all__ aside
    (tmp_path / "module.py").write_text("ok = 1\n" + "y = '" + "z" * 95 + "'\n")
    out = subprocess.run(checker + [str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 1 and "module.py:2: 101 columns" in out.stdout
    assert "python .ci/long_lines.py" in (REPO / ".ci" / "run").read_text()


def test_notebooks_show_results_without_running():
    "Key pictures are PNGs under nbs/images/ shown by the notebooks; small text outputs are kept."
    module_notebooks = sorted((REPO / "nbs").glob("[0-9]*.ipynb"))
    cells = {nb.stem: json.loads(nb.read_text())["cells"] for nb in module_notebooks}
    for name in ("02_surgery", "03_train", "06_analysis"):
        markdown = "".join("".join(c["source"]) for c in cells[name] if c["cell_type"] == "markdown")
        images = re.findall(r"\]\((images/[^)]+\.png)\)", markdown)
        assert images, f"{name} shows no figure without running (python scripts/keep_outputs.py)"
        assert all((REPO / "nbs" / image).is_file() for image in images), images
    kept = sum(bool(c.get("outputs")) for notebook in cells.values() for c in notebook)
    assert kept >= 10, f"only {kept} cells keep an output"
