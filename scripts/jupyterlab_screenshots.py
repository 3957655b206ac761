"""The screenshots of docs/jupyterlab/: the notebooks in JupyterLab, in Chromium, after Run All.

    python scripts/jupyterlab_screenshots.py            # writes docs/jupyterlab/*.png

The same harness as the browser tests (tests/jupyterlab.py), on a copy of nbs/ with the summarized
experiment of docs/toxigen-cpu as the comparison's runs/embedded; each picture is the browser's
viewport with one output scrolled into view.
"""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from test_browser import harness  # noqa: E402

OUT = REPO / "docs" / "jupyterlab"
TRAIN = {"run_dir": "runs/demo", "steps": 20, "base_steps": 200, "eval_every": 2}
SHOTS = [  # (notebook, its parameters, the output to show: a CSS selector and its index, file)
    ("02_surgery", {}, (".js-plotly-plot", 0), "surgery-rules.png"),
    ("train", TRAIN, (".js-plotly-plot", 2), "train-evaluations.png"),
    (
        "compare",
        {"formats": "html"},
        (".jp-CodeCell .jp-OutputArea-output", -1),
        "compare-explorer.png",
    ),
]


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    with harness.jupyterlab(copies={"docs/toxigen-cpu/runs": "runs/embedded"}) as lab:
        for notebook, parameters, (selector, index), name in SHOTS:
            if parameters:
                harness.parameterize(lab.root / "nbs" / f"{notebook}.ipynb", **parameters)
            report = lab.run_all(f"nbs/{notebook}.ipynb", timeout=900)
            assert report.ran_to_the_end and not report.errors, report.summary()
            items = report.page.locator(f"{harness.PANEL} {selector}")
            target = items.nth(items.count() - 1 if index < 0 else index)
            target.evaluate("(el) => el.scrollIntoView({block: 'start'})")
            report.page.wait_for_timeout(1500)
            report.page.screenshot(path=str(OUT / name))
            print(OUT / name)
            lab.close(report.page)


if __name__ == "__main__":
    main()
