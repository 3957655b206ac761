"""The comparison notebook renders headless with its explorer shown (the default) and finishes: the
render that used to wait forever at the explorer's cell (papermill's defaults, the Output-widget
explorer) now ends, and the explorer's figures are stored in the notebook as widgets."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_comparison_renders_headless_with_the_explorer_and_finishes(tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(REPO / "docs" / "toxigen-cpu" / "runs", runs)  # a summarized experiment
    code = "import sys; from toxigs.sweep import render_comparison; render_comparison(sys.argv[1])"
    out = subprocess.run(
        [sys.executable, "-c", code, str(runs)], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    notebook = json.loads((runs / "compare.ipynb").read_text())
    code_cells = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert all(not any(o["output_type"] == "error" for o in c["outputs"]) for c in code_cells)
    last = code_cells[-1]
    assert "explorer(" in "".join(last["source"])
    [view] = [
        o
        for o in last["outputs"]
        if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
    ]
    state = notebook["metadata"]["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    assert view["data"]["application/vnd.jupyter.widget-view+json"]["model_id"] in state
    models = [m["model_name"] for m in state.values()]
    # the explorer's controls and its figures (plotly FigureWidgets, anywidget models), weight-space
    # figures included: drawn from the summarized experiment's stored tables
    assert models.count("DropdownModel") == 3 and "SelectMultipleModel" in models
    figures = [m for m in state.values() if m["model_name"] == "AnyModel"]
    assert len(figures) == 4, models  # trade-off, conflict, distances, twins
