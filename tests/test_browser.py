"""The notebooks in a real browser: JupyterLab driven by Playwright through Debian's Chromium.

What nbdev_test and papermill cannot see: whether a figure draws, whether a widget renders and
redraws its figure, whether Run All in JupyterLab itself reaches the last cell. The harness is
tests/jupyterlab.py; screenshots go to this session's pytest tmp folder (beside its
jupyterlab.log) and to $TOXIGS_SCREENSHOTS if set.
"""

import importlib.util
import sys
from pathlib import Path

import pytest


def load_harness():
    "tests/jupyterlab.py, by its path: `import jupyterlab` is the real package."
    name = "toxigs_tests_jupyterlab"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).with_name("jupyterlab.py")
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


harness = load_harness()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    "One JupyterLab (on a copy of nbs/ and settings.ini) and one browser for this module."
    reason = harness.missing()
    if reason:
        pytest.skip(reason)
    workdir = tmp_path_factory.mktemp("jupyterlab")
    with harness.jupyterlab(workdir=workdir) as server:
        server.screenshots = workdir / "screenshots"
        yield server


def write(lab, name, cells):
    "A notebook of `cells` in the server's copy of nbs/; its path for run_all."
    harness.write_notebook(lab.root / "nbs" / name, cells)
    return f"nbs/{name}"


FIGURES = [
    """import plotly.graph_objects as go
from IPython.display import display

fig = go.Figure(go.Scatter(x=[1, 2, 3], y=[3, 1, 2], name="good"), layout_title_text="good")
fig.show()""",
    # valid JSON whose renderer fails: plotly.js throws on data that is not a list of traces
    """broken = {"application/vnd.plotly.v1+json": {"data": "not-a-list", "layout": {}}}
display(broken, raw=True)""",
    """go.Figure(go.Bar(x=[1, 2], y=[2, 3]), layout=dict(width=3000, title_text="too wide"))""",
]


def test_a_broken_figure_is_caught(lab):
    report = lab.run_all(write(lab, "figures.ipynb", FIGURES), timeout=180,
                         screenshots=lab.screenshots)  # fmt: skip
    print(report.summary())
    try:
        assert report.ran_to_the_end and not report.errors, report.summary()
        good, broken, wide = report.figures
        assert good["rendered"] and good["traces"] == 1 and good["fits"], report.summary()
        assert good["renderer"] == "jupyterlab-plotly" and good["title"] == "good"
        assert not broken["rendered"] and broken["traces"] == 0, report.summary()
        assert wide["rendered"] and not wide["fits"], report.summary()  # wider than its output
        assert any("plotly" in e for e in report.console_errors), report.console_errors
        assert report.screenshots and all(Path(p).stat().st_size for p in report.screenshots)
    finally:
        lab.close(report.page)


def test_an_error_is_caught_and_stops_run_all(lab):
    cells = ["import sys\nprint('a warning', file=sys.stderr)", "1 / 0", "print('never')"]
    report = lab.run_all(write(lab, "error.ipynb", cells), timeout=120)
    print(report.summary())
    try:
        assert report.finished and report.code_cells == 3, report.summary()
        assert [e["ename"] for e in report.errors] == ["ZeroDivisionError"], report.summary()
        assert "division by zero" in report.errors[0]["text"]
        assert [s["text"].strip() for s in report.stderr] == ["a warning"]  # stderr is no error
        assert report.last_executed == 2 and not report.ran_to_the_end, report.summary()
    finally:
        lab.close(report.page)


WIDGETS = [
    """import ipywidgets as widgets
import plotly.graph_objects as go
import traitlets
from IPython.display import display

curves = {"squares": [1, 4, 9, 16], "cubes": [1, 8, 27, 64]}
curve = widgets.Dropdown(options=list(curves), value="squares", description="curve")
frozen = widgets.Dropdown(options=["a", "b"], value="a", description="frozen")  # redraws nothing
output = widgets.Output()


def draw(*_):
    with output:
        output.clear_output(wait=True)
        display(go.Figure(go.Scatter(y=curves[curve.value], name=curve.value)))


curve.observe(draw, names="value")
draw()
widgets.VBox([widgets.HBox([curve, frozen]), output])""",
    # a callback that fails inside its Output
    """failing = widgets.Dropdown(options=["ok", "fails"], value="ok", description="failing")
failing_output = widgets.Output()


def fail(change):
    with failing_output:
        raise ValueError(f"cannot draw {change['new']}")


failing.observe(fail, names="value")
widgets.VBox([failing, failing_output])""",
    # a widget whose model the browser cannot load
    """class Broken(widgets.DOMWidget):
    _model_name = traitlets.Unicode("NoSuchModel").tag(sync=True)
    _model_module = traitlets.Unicode("no-such-widget-module").tag(sync=True)
    _model_module_version = traitlets.Unicode("1.0.0").tag(sync=True)
    _view_name = traitlets.Unicode("NoSuchView").tag(sync=True)
    _view_module = traitlets.Unicode("no-such-widget-module").tag(sync=True)
    _view_module_version = traitlets.Unicode("1.0.0").tag(sync=True)


Broken()""",
]

Y_VALUES = "[...document.querySelectorAll('.js-plotly-plot')].map(p => Array.from(p.data[0].y))"


def test_a_widget_dropdown_redraws_its_figure(lab):
    report = lab.run_all(write(lab, "widgets.ipynb", WIDGETS), timeout=180,
                         screenshots=lab.screenshots)  # fmt: skip
    page = report.page
    print(report.summary())
    try:
        assert report.ran_to_the_end and not report.errors, report.summary()
        control, failing, broken = report.widgets
        assert control["rendered"] and "widget-dropdown" in control["kinds"], report.summary()
        assert control["labels"] == ["curve", "frozen"]
        assert control["options"][0] == ["squares", "cubes"]
        assert not broken["rendered"] and "no-such-widget-module" in broken["error"], broken
        [figure] = report.figures
        assert figure["rendered"] and figure["in_widget"] and figure["fits"], report.summary()
        assert page.evaluate(Y_VALUES) == [[1, 4, 9, 16]]

        assert lab.select_dropdown(page, "curve", "cubes"), "the figure did not redraw"
        assert page.evaluate(Y_VALUES) == [[1, 8, 27, 64]]
        assert lab.select_dropdown(page, "curve", "squares")
        assert page.evaluate(Y_VALUES) == [[1, 4, 9, 16]]
        # a dropdown that redraws nothing is reported as such
        assert not lab.select_dropdown(page, "frozen", "b", timeout=3)
        after = lab.collect(page)
        assert after.figures[0]["rendered"] and not after.errors, after.summary()
        # an error in a widget's callback, shown in its Output, is reported
        assert failing["rendered"] and not lab.select_dropdown(page, "failing", "fails", timeout=3)
        [error] = lab.collect(page).errors
        assert error["kind"] == "in widget" and "ValueError: cannot draw fails" in error["text"]
    finally:
        lab.close(page)


def test_module_notebook_runs_to_the_end(lab):
    report = lab.run_all("nbs/00_checks.ipynb", timeout=300, screenshots=lab.screenshots)
    print(report.summary())
    try:
        assert not report.errors, report.summary()
        assert report.code_cells > 10 and report.ran_to_the_end, report.summary()
    finally:
        lab.close(report.page)


FIGURE_WIDGET = """import ipywidgets as widgets
import plotly.graph_objects as go

curves = {"squares": [1, 4, 9, 16], "cubes": [1, 8, 27, 64]}
figure = go.FigureWidget(go.Scatter(y=curves["squares"]))
curve = widgets.Dropdown(options=list(curves), value="squares", description="curve")


def redraw(change):
    figure.data[0].y = curves[change["new"]]


curve.observe(redraw, names="value")
widgets.VBox([curve, figure])"""


def test_a_figurewidget_redraws_in_place(lab):
    if importlib.util.find_spec("anywidget") is None:
        pytest.skip("plotly's FigureWidget needs anywidget, which is not installed")
    report = lab.run_all(write(lab, "figurewidget.ipynb", [FIGURE_WIDGET]), timeout=180)
    page = report.page
    print(report.summary())
    try:
        assert report.ran_to_the_end and not report.errors, report.summary()
        [figure] = report.figures
        assert figure["rendered"] and figure["renderer"] == "widget view", report.summary()
        assert lab.select_dropdown(page, "curve", "cubes"), "the FigureWidget did not redraw"
        assert page.evaluate(Y_VALUES) == [[1, 8, 27, 64]]
    finally:
        lab.close(page)
