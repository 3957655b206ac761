"""Run module notebooks and keep what a reader should see without running them: small deterministic text
outputs (printed numbers, tables), and each plotly figure as a PNG under nbs/images/ shown by a markdown
cell right under its code cell (the interactive figure itself, large JSON, is not kept).

    python scripts/keep_outputs.py nbs/02_surgery.ipynb [...]     # then: nbdev_clean, and commit

Outputs that would change from run to run (timings, temporary paths, progress bars, warnings) are dropped.
"""
import json
import re
import sys
from pathlib import Path

import nbformat
import plotly.io
from nbclient import NotebookClient

from toxigs.analysis import save_figure

MAX_TEXT = 4000  # characters of one kept output
PLOTLY = "application/vnd.plotly.v1+json"
CHANGING = re.compile(r"/tmp/|\d+(\.\d+)? ?s\b|\d+:\d\d|it/s|Warning|warning")
IMAGE_CELL = "<!-- figure output, written by scripts/keep_outputs.py -->"


def kept_text(output: dict) -> dict | None:
    "The output if it is small, deterministic text; else None."
    if output["output_type"] == "stream":
        text = output["text"]
        keep = output["name"] == "stdout" and len(text) <= MAX_TEXT and not CHANGING.search(text)
        return output if keep else None
    if output["output_type"] not in ("execute_result", "display_data"):
        return None
    data = {k: v for k, v in output["data"].items() if k in ("text/plain", "text/html", "text/markdown")}
    text = "".join("".join(v) if isinstance(v, list) else v for v in data.values())
    if not data or PLOTLY in output["data"] or len(text) > 3 * MAX_TEXT or CHANGING.search(text):
        return None
    return nbformat.from_dict({**output, "data": data, "metadata": {}})


def figure_of(outputs: list) -> dict | None:
    return next((o["data"][PLOTLY] for o in outputs if o.get("data", {}).get(PLOTLY)), None)


SKIPPED = re.compile(r"^#\|\s*(gpu|slow|eval:\s*false)", re.M)  # what nbdev_test skips


def execute(notebook, folder: Path):
    "Run every cell but those flagged gpu or slow (left as they are, without outputs)."
    cells = enumerate(notebook.cells)
    skipped = {i: c.source for i, c in cells if c.cell_type == "code" and SKIPPED.search(c.source)}
    for i in skipped:
        notebook.cells[i].source = ""
    NotebookClient(notebook, timeout=1200, resources={"metadata": {"path": str(folder)}}).execute()
    for i, source in skipped.items():
        notebook.cells[i].source = source


def keep_outputs(path: Path):
    notebook = nbformat.read(path, as_version=4)
    execute(notebook, path.parent)
    cells, figures = [], 0
    for cell in notebook.cells:
        if cell.cell_type == "markdown" and IMAGE_CELL in cell.source:
            continue  # written again below, from this run
        cells.append(cell)
        if cell.cell_type != "code":
            continue
        figure = figure_of(cell.outputs)
        cell.outputs = [o for o in map(kept_text, cell.outputs) if o is not None]
        cell.execution_count = None
        if figure is not None:
            figures += 1
            name = f"{path.stem}_{figures}"
            save_figure(plotly.io.from_json(json.dumps(figure)), path.parent / "images" / name, formats=("png",))
            image = f"{IMAGE_CELL}\n![{name}](images/{name}.png)"
            cells.append(nbformat.v4.new_markdown_cell(image, id=f"figure-{figures}"))
    notebook.cells = cells
    nbformat.write(notebook, path)
    print(f"{path}: {sum(bool(c.get('outputs')) for c in cells)} cells with outputs, {figures} figures")


if __name__ == "__main__":
    for name in sys.argv[1:]:
        keep_outputs(Path(name))
