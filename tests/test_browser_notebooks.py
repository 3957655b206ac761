"""The project's notebooks in JupyterLab, in Chromium, through Run All as a reader runs them on a CPU
machine: 02_surgery (its GPU-only cell skips itself), train (runs land in runs/ at the project root),
compare (every figure fits its output, the explorer starts from the notebook's parameters and redraws
on a change), and every module notebook reaching its last cell. Harness: tests/jupyterlab.py."""

import time
from pathlib import Path

import pytest

from test_browser import harness

REPO = Path(__file__).resolve().parents[1]
SUMMARIZED = "docs/toxigen-cpu/runs"  # a summarized experiment: the comparison's default folder


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    reason = harness.missing()
    if reason:
        pytest.skip(reason)
    workdir = tmp_path_factory.mktemp("notebooks")
    with harness.jupyterlab(workdir=workdir, copies={SUMMARIZED: "runs/embedded"}) as server:
        server.screenshots = workdir / "screenshots"
        yield server


def outputs_text(page) -> str:
    return page.evaluate(
        "[...document.querySelectorAll('.jp-OutputArea-output')].map(o => o.innerText).join('\\n')"
    )


def assert_clean(report):
    "Run All reached the last cell without an error, and every figure drew its traces inside its output."
    assert report.ran_to_the_end and not report.errors, report.summary()
    for figure in report.figures:
        assert figure["rendered"] and figure["traces"] > 0 and figure["fits"], (
            figure,
            report.summary(),
        )


def test_the_surgery_notebook_runs_all_on_a_cpu_and_says_what_it_skips(lab):
    report = lab.run_all("nbs/02_surgery.ipynb", timeout=600, screenshots=lab.screenshots)
    try:
        assert_clean(report)
        assert report.figures, report.summary()  # plot_rules, within its output area
        assert "skipped on this machine (no CUDA GPU)" in outputs_text(report.page)
    finally:
        lab.close(report.page)


def test_the_train_notebook_writes_its_runs_at_the_project_root(lab):
    harness.parameterize(lab.root / "nbs" / "train.ipynb", run_dir="runs/browser", steps=4, base_steps=20,
                         eval_every=2)  # fmt: skip
    report = lab.run_all("nbs/train.ipynb", timeout=600, screenshots=lab.screenshots)
    try:
        assert_clean(report)
        assert len(report.figures) == 3, report.summary()  # base, unlearning, evaluations
        assert (
            lab.root / "runs" / "browser" / "idkdpo_pcgrad-seed0" / "evaluations.jsonl"
        ).is_file()
        assert not (lab.root / "nbs" / "runs").exists()  # not beside the notebook
    finally:
        lab.close(report.page)


def test_the_compare_notebook_shows_the_explorer_with_its_parameters(lab):
    harness.parameterize(
        lab.root / "nbs" / "compare.ipynb", formats="html", toxicity="mean_toxicity", window=5
    )
    report = lab.run_all("nbs/compare.ipynb", timeout=600, screenshots=lab.screenshots)
    page = report.page
    try:
        assert_clean(report)
        explorer = report.widgets[-1]
        assert explorer["rendered"] and {"runs", "toxicity", "utility", "group by"} <= set(
            explorer["labels"]
        )
        # the explorer's figures (trade-off, conflict, distances, twins), from the stored tables
        assert sum(f["in_widget"] for f in report.figures) == 4, report.summary()
        toxicity = page.locator(".widget-dropdown", has_text="toxicity").locator("select")
        assert toxicity.input_value() == "mean_toxicity"  # the notebook's parameter
        assert lab.select_dropdown(page, "toxicity", "toxicity_probability"), (
            "the trade-off did not redraw"
        )
        after = lab.collect(page)
        assert not after.errors and all(f["rendered"] for f in after.figures), after.summary()
    finally:
        lab.close(page)


MODULE_NOTEBOOKS = sorted(p.name for p in (REPO / "nbs").glob("[0-9]*.ipynb"))


def test_every_module_notebook_runs_all_to_its_last_cell(lab):
    failed, took = [], {}
    for name in MODULE_NOTEBOOKS:
        started = time.time()
        report = lab.run_all(f"nbs/{name}", timeout=900)
        took[name] = round(time.time() - started)
        if (
            not report.ran_to_the_end
            or report.errors
            or not all(f["rendered"] for f in report.figures)
        ):
            failed.append(report.summary())
        lab.close(report.page)
    print(took)
    assert not failed, "\n\n".join(failed)
