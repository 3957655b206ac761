"""A JupyterLab in a real, headless browser, for tests of what the notebooks show.

The server runs on a copy of the repository's notebooks (`nbs/` and `settings.ini` copied to
`<workdir>/project`, its root folder), so Run All may write what it likes; Playwright drives
Debian's Chromium (`/usr/bin/chromium`; nothing is downloaded: never `playwright install`)::

    with jupyterlab(workdir=tmp_path, copies={"docs/toxigen-cpu/runs": "runs/embedded"}) as lab:
        parameterize(lab.root / "nbs/compare.ipynb", formats="html", widgets=True)
        report = lab.run_all("nbs/compare.ipynb", timeout=600, screenshots=tmp_path / "shots")
        assert not report.errors and report.ran_to_the_end, report.summary()
        assert all(f["rendered"] and f["fits"] for f in report.figures), report.summary()
        assert all(w["rendered"] for w in report.widgets), report.summary()
        assert lab.select_dropdown(report.page, "toxicity", "mean_toxicity")  # it redrew
        lab.close(report.page)  # and its kernel

`Report`: errors (cell, kind, ename, evalue, text), stderr, figures (cell, rendered, traces,
data_traces, fits, width, container_width, title, renderer, in_widget), widgets (cell,
rendered, kinds, labels, options, error), code_cells, executed, last_executed,
execution_counts, finished, ran_to_the_end, console_errors, dialogs, screenshots, timings,
page, summary(). `JupyterLab`: run_all, open, run_all_cells, wait_done, collect, screenshot,
select_dropdown, options, close, shutdown, url. Cell numbers are 0-based, over all cells.

This file is named `jupyterlab.py`, as the real package is: import it by its path (see
`load_harness` in tests/test_browser.py, or `from test_browser import harness`), not with
`import jupyterlab`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("TOXIGS_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS_ENV = "TOXIGS_SCREENSHOTS"  # a folder that also receives every screenshot, if set

# The DOM this harness reads (JupyterLab 4.6, ipywidgets 8, plotly.js through jupyterlab-plotly).
PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"  # the notebook on show (one per page)
CELL = ".jp-Notebook .jp-Cell"
CODE_CELL = "jp-CodeCell"  # a class of CELL
PROMPT = ".jp-InputArea-prompt"  # "[ ]:", "[*]:", "[7]:"
OUTPUT = ".jp-OutputArea-output"  # one output; its data-mime-type says which renderer drew it
STDERR = "application/vnd.jupyter.stderr"  # stderr streams, tracebacks and renderer failures
PLOTLY_MIME = "application/vnd.plotly.v1+json"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
PLOT = ".js-plotly-plot"  # the plotly.js graph div
TRACES = (  # what plotly.js draws for one trace, by kind
    "g.trace, g.hm, g.contour, g.im, .parcoords, .table, .sankey, .gl-container canvas"
)
WIDGET = ".jupyter-widgets"
WIDGET_ERROR = ".jupyter-widgets-error-widget"  # a view whose model or view failed
EXECUTION_INDICATOR = ".jp-Notebook-ExecutionIndicator"  # data-status: idle, busy, ...
RUN_MENU = ".lm-MenuBar-item"  # the "Run" entry of the main menu
RUN_ALL = '.lm-Menu-item[data-command="runmenu:run-all"]'  # Run > Run All Cells
DIALOG = ".jp-Dialog"
TOAST = ".Toastify__toast"

# User settings of the test server: every cell in the DOM (no windowing), no news, no update
# checks, no extension manager, no autosave (the copy keeps what it was given).
USER_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
        "doNotDisturbMode": False,
    },
    "@jupyterlab/extensionmanager-extension/plugin.jupyterlab-settings": {"enabled": False},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/apputils-extension/sessionDialogs.jupyterlab-settings": {
        "skipKernelRestartDialog": True
    },
}
PAGE_CONFIG = {"disabledExtensions": {"jupyterlab/apputils-extension:announcements": True}}


def missing() -> str | None:
    "Why the browser tests cannot run here, or None."
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright; no `playwright install`)"
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    if shutil.which("jupyter-lab") is None and not _has_module("jupyterlab"):
        return "jupyterlab is not installed"
    return None


def _has_module(name: str) -> bool:
    out = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True)
    return out.returncode == 0


def copy_project(dest: Path, source: Path = REPO, copies: dict | None = None) -> Path:
    """Copy `source`'s nbs/ (without runs/ and checkpoints) and settings.ini to `dest/project`,
    and each `{from: to}` of `copies` (paths relative to `source` and to the project, e.g.
    `{"docs/toxigen-cpu/runs": "runs/embedded"}`); return the project folder."""
    project = Path(dest) / "project"
    ignore = shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__", "_proc", "runs")
    shutil.copytree(Path(source) / "nbs", project / "nbs", ignore=ignore, dirs_exist_ok=True)
    shutil.copy2(Path(source) / "settings.ini", project / "settings.ini")
    for frm, to in (copies or {}).items():
        frm, to = Path(source) / frm, project / to
        to.parent.mkdir(parents=True, exist_ok=True)
        if frm.is_dir():
            shutil.copytree(frm, to, dirs_exist_ok=True)
        else:
            shutil.copy2(frm, to)
    return project


def write_notebook(path: Path, cells: list[str], kernel: str = "python3") -> Path:
    "Write a notebook of code cells (markdown cells: strings that start with '#md ')."
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": kernel, "display_name": kernel, "language": "python"}
    for source in cells:
        if source.startswith("#md "):
            nb.cells.append(nbformat.v4.new_markdown_cell(source[4:]))
        else:
            nb.cells.append(nbformat.v4.new_code_cell(source))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return Path(path)


def parameterize(path: Path, **parameters) -> Path:
    """Give a notebook (in the copy) other parameters, as papermill does: a cell of assignments
    (tagged injected-parameters) right after the cell tagged `parameters`."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    where = next(
        (i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])), None
    )
    if where is None:
        raise ValueError(f"{path} has no cell tagged parameters")
    source = "\n".join(f"{name} = {value!r}" for name, value in parameters.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(where + 1, cell)
    nbformat.write(nb, str(path))
    return Path(path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "notebook"


@dataclass
class Report:
    "What one Run All of a notebook showed in the browser."

    notebook: str
    seconds: float = 0.0  # from the click on Run All to every cell done
    finished: bool = False  # no "[*]" left and the kernel idle before the timeout
    code_cells: int = 0  # code cells with code (empty ones are never executed)
    executed: int = 0  # of those, how many show an execution count
    last_executed: int = 0  # 1-based position (among code_cells) of the last one executed
    execution_counts: list = field(default_factory=list)  # per code cell: int or None
    errors: list = field(default_factory=list)  # dicts: cell, ename, evalue, text, kind
    stderr: list = field(default_factory=list)  # dicts: cell, text (stderr streams, allowed)
    figures: list = field(default_factory=list)  # dicts: cell, rendered, traces, fits, ...
    widgets: list = field(default_factory=list)  # dicts: cell, rendered, kinds, labels, error
    console_errors: list = field(default_factory=list)  # the page's console errors
    dialogs: list = field(default_factory=list)  # what the dialogs it dismissed said
    timings: dict = field(default_factory=dict)  # seconds: open, run, settle, screenshots
    screenshots: list = field(default_factory=list)  # paths
    page: object = None  # the Playwright page, still open unless run_all(close=True)

    @property
    def ran_to_the_end(self) -> bool:
        "Every code cell with code executed."
        return self.finished and self.executed == self.code_cells == self.last_executed

    def summary(self) -> str:
        "A few lines for an assertion message."
        lines = [
            f"{self.notebook}: finished={self.finished} in {self.seconds:.0f}s, "
            f"executed {self.executed}/{self.code_cells} code cells "
            f"(last executed: {self.last_executed}); seconds: {self.timings}",
        ]
        for e in self.errors:
            text = e.get("text") or f"{e.get('ename')}: {e.get('evalue')}"
            lines.append(f"  error in cell {e['cell']} ({e['kind']}): {text[-1500:]}")
        for f in self.figures:
            lines.append(
                f"  figure in cell {f['cell']} ({f['renderer']}{', widget' * f['in_widget']}): "
                f"rendered={f['rendered']} traces={f['traces']} "
                f"fits={f['fits']} width={f['width']}/{f['container_width']} {f['title']!r}"
            )
        for w in self.widgets:
            lines.append(
                f"  widget in cell {w['cell']}: rendered={w['rendered']} kinds={w['kinds']} "
                f"labels={w['labels']} error={w['error']!r}"
            )
        if self.console_errors:
            lines.append(f"  console errors: {self.console_errors[:5]}")
        if self.dialogs:
            lines.append(f"  dialogs dismissed: {self.dialogs[:5]}")
        if self.screenshots:
            lines.append(f"  screenshots: {Path(self.screenshots[0]).parent}")
        return "\n".join(lines)


# Read the notebook's DOM; with window.jupyterapp (expose_app_in_browser) the cell models
# also say which outputs are errors, which the DOM alone does not (an error is drawn as
# stderr).
_COLLECT = r"""
([S]) => {
  const app = window.jupyterapp;
  const root = document.querySelector(S.PANEL) || document;
  const panel = app && ([...app.shell.widgets('main')].find(w => w.node === root)
                        || app.shell.currentWidget);
  const cells = [...root.querySelectorAll(S.CELL)];
  let models = panel && panel.content && panel.content.widgets
    ? panel.content.widgets.map(w => w.model) : null;
  if (models && models.length !== cells.length) models = null;  // not this notebook's
  const out = {cells: [], figures: [], widgets: [], errors: [], stderr: []};
  const rect = el => { const r = el.getBoundingClientRect();
    return {x: r.x, y: r.y, width: r.width, height: r.height}; };
  cells.forEach((cell, index) => {
    const code = cell.classList.contains(S.CODE_CELL);
    const model = models ? models[index] : null;
    const source = model ? model.sharedModel.getSource()
      : (cell.querySelector('.cm-content') || {}).innerText || '';
    const prompt = (cell.querySelector(S.PROMPT) || {}).innerText || '';
    const m = prompt.match(/\[(.*?)\]/);
    out.cells.push({index, code, empty: !source.trim(), prompt: m ? m[1].trim() : ''});
    if (!code) return;
    // top-level outputs of this cell, in order (the widget Output's own are nested)
    const area = cell.querySelector('.jp-OutputArea');
    const outputs = area ? [...area.querySelectorAll(':scope > .jp-OutputArea-child')]
      .map(c => c.querySelector(S.OUTPUT)).filter(Boolean) : [];
    const kinds = [];
    if (model && model.outputs) {
      for (let j = 0; j < model.outputs.length; j++) {
        const o = model.outputs.get(j).toJSON();
        kinds.push(o);
      }
    }
    const aligned = kinds.length === outputs.length;  // the model's outputs, one per child
    const traceback = /Traceback \(most recent call last\)|^\w*(Error|Exception)\b.*:/m;
    outputs.forEach((node, j) => {
      const mime = node.getAttribute('data-mime-type') || '';
      const o = aligned ? kinds[j] : null;
      if (o && o.output_type === 'error') {
        out.errors.push({cell: index, kind: 'exception', ename: o.ename, evalue: o.evalue,
                         text: node.innerText});
      } else if (mime === S.STDERR) {
        const text = node.innerText;
        if (/^Javascript Error:/.test(text)) {
          out.errors.push({cell: index, kind: 'render', ename: 'Javascript Error',
                           evalue: text, text});
        } else if (!aligned && traceback.test(text)) {
          out.errors.push({cell: index, kind: 'exception?', ename: '', evalue: '', text});
        } else {
          out.stderr.push({cell: index, text});
        }
      }
    });
    // outputs inside widgets (an ipywidgets Output): no model here, so a traceback is an error
    const nested = `${S.WIDGET} ${S.OUTPUT}[data-mime-type="${S.STDERR}"]`;
    for (const node of cell.querySelectorAll(nested)) {
      const text = node.innerText;
      if (traceback.test(text) || /^Javascript Error:/.test(text)) {
        out.errors.push({cell: index, kind: 'in widget', ename: '', evalue: '', text});
      } else {
        out.stderr.push({cell: index, text});
      }
    }
    // figures: every plotly output (jupyterlab-plotly's .jp-RenderedPlotly, drawn or not)
    // and every graph div (from text/html, or inside widgets)
    const slots = [...cell.querySelectorAll(`${S.OUTPUT}.jp-RenderedPlotly`)];
    for (const plot of cell.querySelectorAll(S.PLOT)) {
      if (!slots.some(s => s.contains(plot))) slots.push(plot);
    }
    for (const slot of slots) {
      const plot = slot.matches(S.PLOT) ? slot : slot.querySelector(S.PLOT);
      const container = slot.closest(S.OUTPUT) || slot;
      const svg = plot ? plot.querySelector('svg.main-svg') : null;
      const traces = plot ? plot.querySelectorAll(S.TRACES).length : 0;
      const data = plot && Array.isArray(plot.data) ? plot.data.length : null;
      const r = svg ? rect(svg) : plot ? rect(plot) : null;
      const c = rect(container);
      const width = r ? Math.round(r.width) : 0;
      const cw = Math.round(container.clientWidth || c.width);
      const layout = plot && plot.layout ? plot.layout : {};
      const title = layout.title ? (layout.title.text ?? layout.title) : '';
      const host = slot.closest('[data-mime-type]');
      out.figures.push({
        cell: index, rendered: !!(plot && svg && traces > 0), traces, data_traces: data,
        svg: !!svg, width, height: r ? Math.round(r.height) : 0, container_width: cw,
        fits: !!r && width > 0 && r.x >= c.x - 1 && r.x + r.width <= c.x + cw + 1,
        title: typeof title === 'string' ? title : JSON.stringify(title),
        renderer: slot.classList.contains('jp-RenderedPlotly') ? 'jupyterlab-plotly'
          : host ? host.getAttribute('data-mime-type')
          : slot.closest(S.WIDGET) ? 'widget view' : '',  // e.g. a FigureWidget (anywidget)
        in_widget: !!slot.closest(S.WIDGET),
        text: plot ? '' : (container.innerText || '').slice(0, 500),
      });
    }
    // widgets: every top-level widget output (nested views are its parts)
    outputs.forEach((node, j) => {
      const o = aligned ? kinds[j] : null;
      const text = (node.innerText || '').trim();
      const isWidget = o ? !!(o.data && o.data[S.WIDGET_MIME])
        : !!node.querySelector(`:scope > ${S.WIDGET}`) || /^Error displaying widget/.test(text);
      if (!isWidget) return;
      const views = node.querySelectorAll(S.WIDGET);
      const broken = node.querySelector(S.WIDGET_ERROR);
      if (broken && /Click to show/.test(broken.innerText)) broken.closest(S.WIDGET).click();
      const error = broken ? 'error widget: ' + (broken.innerText || '').trim().slice(0, 500)
        : /^Error displaying widget/.test(text) ? text
        : views.length ? '' : 'no widget view: ' + text.slice(0, 200);
      const classes = new Set();
      for (const v of views) for (const c of v.classList)
        if (c.startsWith('widget-') && !['widget-inline-hbox', 'widget-box'].includes(c))
          classes.add(c);
      out.widgets.push({
        cell: index, rendered: views.length > 0 && !error, views: views.length,
        kinds: [...classes].sort(),
        labels: [...node.querySelectorAll('.widget-label')]
          .map(l => l.innerText.replace(/[\s\u200b]+/g, ' ').trim()).filter(Boolean),
        options: [...node.querySelectorAll('.widget-dropdown select')].map(
          sel => [...sel.options].map(x => x.text)),
        error,
      });
    });
  });
  return out;
}
"""

# A fingerprint of the figures in one output area: their traces' data, or '' if none drew.
_FIGURE_STATE = """
(area) => {
  const plots = [...area.querySelectorAll('.js-plotly-plot')];
  const keys = ['type', 'name', 'x', 'y', 'z', 'values', 'labels', 'text'];
  const norm = v => (ArrayBuffer.isView(v) ? Array.from(v) : v);
  return plots.filter(p => p.querySelector('svg.main-svg') && Array.isArray(p.data))
    .map(p => JSON.stringify(p.data.map(t => keys.map(k => norm(t[k]))))).join('|');
}
"""


class JupyterLab:
    "A JupyterLab server on `root_dir` and a headless Chromium to drive it; a context manager."

    def __init__(
        self,
        root_dir: Path,  # the server's root folder (a copy of the project)
        workdir: Path | None = None,  # where its settings, runtime files and log go
        pythonpath: str | None = str(REPO),  # prepended to the kernels' PYTHONPATH
        startup_timeout: float = 120,
        viewport: tuple[int, int] = (1400, 900),
        env: dict | None = None,  # more environment for the server and its kernels
    ):
        self.root = Path(root_dir).resolve()
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="jupyterlab-")).resolve()
        self.pythonpath, self.startup_timeout, self.viewport = pythonpath, startup_timeout, viewport
        self.extra_env = dict(env or {})
        self.token = secrets.token_hex(16)
        self.port = None
        self.process = None
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log = self.workdir / "jupyterlab.log"
        self._playwright = self._browser = self._context = None
        self._pages = 0

    # --- the server ---------------------------------------------------------------------
    def _prepare(self):
        settings = self.workdir / "user-settings"
        for name, value in USER_SETTINGS.items():
            path = settings / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(value, indent=2))
        config = self.workdir / "jupyter-config"
        (config / "labconfig").mkdir(parents=True, exist_ok=True)
        (config / "labconfig" / "page_config.json").write_text(json.dumps(PAGE_CONFIG))
        for d in ("workspaces", "runtime"):
            (self.workdir / d).mkdir(exist_ok=True)
        env = dict(os.environ)
        env.update(
            JUPYTER_CONFIG_DIR=str(config),  # no user config; the page config above
            JUPYTER_RUNTIME_DIR=str(self.workdir / "runtime"),
            TOKENIZERS_PARALLELISM="false",
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            HF_DATASETS_OFFLINE="1",
            PYTHONUNBUFFERED="1",
        )
        env.pop("JUPYTER_TOKEN", None)
        if self.pythonpath:
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (self.pythonpath, os.environ.get("PYTHONPATH", "")) if p
            )
        env.update(self.extra_env)
        return settings, env

    def _command(self, settings: Path) -> list[str]:
        return [
            sys.executable, "-m", "jupyterlab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root}",
            f"--LabApp.user_settings_dir={settings}",
            f"--LabApp.workspaces_dir={self.workdir / 'workspaces'}",
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: which outputs are errors
            "--MappingKernelManager.default_kernel_name=python3",
            "--KernelSpecManager.allowed_kernelspecs=python3",
            "--ServerApp.terminals_enabled=False",
            "--LabApp.extension_manager=readonly",
        ] + (["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else [])  # fmt: skip

    def _get(self, path: str, timeout: float = 5, method: str = "GET"):
        "A request to the server's REST API (token-authenticated: no XSRF cookie needed)."
        url = f"http://127.0.0.1:{self.port}{path}"
        req = urllib.request.Request(
            url, headers={"Authorization": f"token {self.token}"}, method=method
        )
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()

    def start(self) -> "JupyterLab":
        settings, env = self._prepare()
        for attempt in range(3):
            self.port = _free_port()
            with open(self.log, "ab") as log:
                log.write(f"\n=== {' '.join(self._command(settings))}\n".encode())
                log.flush()
                self.process = subprocess.Popen(
                    self._command(settings),
                    cwd=self.root,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,  # its own process group, killed at the end
                )
            deadline = time.monotonic() + self.startup_timeout
            while time.monotonic() < deadline and self.process.poll() is None:
                try:
                    if self._get("/api/status", timeout=2)[0] == 200:
                        return self
                except (urllib.error.URLError, ConnectionError, OSError):
                    pass
                time.sleep(0.3)
            if self.process.poll() is None:
                self.stop()
                raise TimeoutError(
                    f"JupyterLab did not answer in {self.startup_timeout}s; see {self.log}"
                )
            if "already in use" not in self._tail(5):
                break  # it died, not for want of a port
        raise RuntimeError(f"JupyterLab did not start; see {self.log}:\n{self._tail()}")

    def _tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def _kernel_pids(self) -> list[int]:
        "Kernels of this server: processes whose command line names its runtime folder."
        runtime = str(self.workdir / "runtime")
        pids = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if runtime in cmdline and int(proc.name) != os.getpid():
                pids.append(int(proc.name))
        return pids

    def stop(self):
        "Close the browser, shut the server and its kernels down."
        self._close_browser()
        if self.process is None:
            return
        kernels = self._kernel_pids()
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGTERM)  # the server shuts its kernels down
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)  # anything left in its group
        for pid in set(kernels) | set(self._kernel_pids()):  # a kernel left behind, and the
            with contextlib.suppress(ProcessLookupError, PermissionError):  # group it leads
                if os.getpgid(pid) == pid:
                    os.killpg(pid, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)
        self.process = None

    def __enter__(self) -> "JupyterLab":
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def url(self, path: str = "", workspace: str | None = None) -> str:
        """The address of `path` (relative to the root folder) in JupyterLab, with the token;
        in a fresh `workspace` (no tabs restored from an earlier page) if one is named."""
        base = f"http://127.0.0.1:{self.port}/lab"
        if workspace:
            return f"{base}/workspaces/{workspace}/tree/{path.lstrip('/')}?reset&token={self.token}"
        return f"{base}/tree/{path.lstrip('/')}?token={self.token}"

    # --- the browser --------------------------------------------------------------------
    @property
    def browser(self):
        if self._browser is None:
            from playwright.sync_api import sync_playwright

            self._playwright = sync_playwright().start()
            self._browser = self._playwright.chromium.launch(
                executable_path=CHROMIUM,
                headless=True,
                args=["--disable-dev-shm-usage", "--disable-gpu", "--no-first-run"],
            )
            w, h = self.viewport
            self._context = self._browser.new_context(viewport={"width": w, "height": h})
        return self._browser

    def _close_browser(self):
        for closer in (self._context, self._browser):
            with contextlib.suppress(Exception):
                closer and closer.close()
        with contextlib.suppress(Exception):
            self._playwright and self._playwright.stop()
        self._playwright = self._browser = self._context = None

    def new_page(self):
        self.browser  # noqa: B018 (starts it)
        page = self._context.new_page()
        page.console_errors, page.dialogs = [], []
        page.on(
            "console",
            lambda m: m.type == "error" and page.console_errors.append(m.text[:500]),
        )
        page.on("pageerror", lambda e: page.console_errors.append(f"pageerror: {e}"[:500]))
        return page

    def dismiss_dialogs(self, page) -> list[str]:
        "Close JupyterLab's dialogs and notifications; return what they said."
        said = []
        for _ in range(5):
            dialog = page.locator(DIALOG)
            if not dialog.count():
                break
            text = dialog.first.inner_text()
            said.append(text)
            if re.search(r"Select Kernel", text, re.I):  # the default, python3, is selected
                button = dialog.first.locator(".jp-Dialog-button.jp-mod-accept")
            else:
                button = dialog.first.locator(".jp-Dialog-button.jp-mod-reject")
            if button.count():
                button.first.click()
            else:
                page.keyboard.press("Escape")
            page.wait_for_timeout(300)
        toasts = page.locator(TOAST)
        for i in range(toasts.count()):
            toast = toasts.nth(i)
            with contextlib.suppress(Exception):
                said.append(toast.inner_text())
                no = toast.get_by_role("button", name=re.compile(r"^(No|Dismiss)$"))
                (no.first if no.count() else toast.locator(".Toastify__close-button")).click(
                    timeout=2000
                )
        seen = getattr(page, "dialogs", [])
        page.dialogs = seen + [x for x in said if x not in seen]
        return said

    def _kernel_status(self, page) -> str:
        "The toolbar's kernel status; 'idle' only if the kernel itself also says so."
        return page.evaluate(
            """([on, sel]) => {
                 const i = (document.querySelector(on) || document).querySelector(sel);
                 const status = i ? (i.getAttribute('data-status') || '') : '';
                 const app = window.jupyterapp, panel = app && app.shell.currentWidget;
                 const ctx = panel && panel.sessionContext;
                 if (ctx && status === 'idle') {  // the indicator says idle before a kernel
                   const kernel = ctx.session && ctx.session.kernel;
                   return kernel ? kernel.status : 'no kernel';
                 }
                 return status; }""",
            [PANEL, EXECUTION_INDICATOR],
        )

    def wait_idle(self, page, timeout: float = 120):
        "Wait until the notebook's kernel is idle (its toolbar's execution indicator)."
        deadline = time.monotonic() + timeout
        status, calm = "", 0
        while time.monotonic() < deadline:
            self.dismiss_dialogs(page)
            status = self._kernel_status(page)
            calm = calm + 1 if status == "idle" else 0
            if calm >= 3:
                return
            page.wait_for_timeout(250)
        raise TimeoutError(f"the kernel is not idle after {timeout}s (status {status!r})")

    def open(self, notebook: str, timeout: float = 120):
        "Open `notebook` (a path under the root folder); return the page once its kernel idles."
        page = self.new_page()
        self._pages += 1
        url = self.url(notebook, workspace=f"test-{self._pages}")
        page.goto(url, wait_until="domcontentloaded", timeout=timeout * 1000)
        page.wait_for_selector(f"{PANEL} .jp-Notebook .jp-Cell", timeout=timeout * 1000)
        self.wait_idle(page, timeout)
        page.notebook = notebook
        return page

    def run_all_cells(self, page):
        "Run > Run All Cells, through the menu."
        self.dismiss_dialogs(page)
        page.locator(f"{PANEL} .jp-Notebook").first.click(position={"x": 5, "y": 5})
        page.locator(RUN_MENU, has_text=re.compile(r"^Run$")).first.click()
        page.locator(RUN_ALL).first.click()

    def _prompts(self, page) -> list[str]:
        return page.evaluate(
            """([panel, cell, prompt]) => [...(document.querySelector(panel) || document)
                 .querySelectorAll(cell)].filter(c => c.classList.contains('jp-CodeCell'))
                 .map(c => ((c.querySelector(prompt) || {}).innerText || '').trim())""",
            [PANEL, CELL, PROMPT],
        )

    def wait_done(self, page, before: list[str], timeout: float = 600) -> bool:
        """Wait until Run All is over: no [*] prompt and the kernel idle, 3 polls in a row
        (1.2 s). True if it was before `timeout`."""
        deadline = time.monotonic() + timeout
        started, calm = False, 0
        while time.monotonic() < deadline:
            prompts = self._prompts(page)
            busy = any("*" in p for p in prompts)
            started = started or busy or prompts != before
            idle = self._kernel_status(page) == "idle"
            calm = calm + 1 if started and idle and not busy else 0
            if calm >= 3:
                return True
            if not started and time.monotonic() > deadline - timeout + 20:
                started = True  # nothing changed in 20 s: every cell may be empty
            self.dismiss_dialogs(page)
            page.wait_for_timeout(400)
        return False

    def settle(self, page, timeout: float = 30):
        "Wait for figures and widgets to stop changing (they draw after the kernel idles)."
        deadline = time.monotonic() + timeout
        last, same = None, 0
        while time.monotonic() < deadline:
            now = page.evaluate(
                """(s) => { const root = document.querySelector(s.panel) || document;
                   return [...root.querySelectorAll(s.plot)].map(p => !!p.querySelector(
                       'svg.main-svg') + ':' + p.querySelectorAll(s.traces).length)
                     .join(',') + '/' + root.querySelectorAll(s.widget).length; }""",
                {"panel": PANEL, "plot": PLOT, "traces": TRACES, "widget": WIDGET},
            )
            same = same + 1 if now == last else 0
            last = now
            if same >= 3:
                return
            page.wait_for_timeout(500)

    def collect(self, page, notebook: str = "") -> Report:
        "Read the open notebook's errors, figures, widgets and execution counts from the page."
        names = (
            "PANEL CELL CODE_CELL PROMPT OUTPUT STDERR WIDGET_MIME PLOT TRACES WIDGET WIDGET_ERROR"
        )
        sel = {name: globals()[name] for name in names.split()}
        got = page.evaluate(_COLLECT, [sel])
        notebook = notebook or getattr(page, "notebook", "")
        report = Report(notebook=notebook, page=page)
        report.finished = self._kernel_status(page) == "idle" and not any(
            "*" in p for p in self._prompts(page)
        )
        code = [c for c in got["cells"] if c["code"] and not c["empty"]]
        counts = [int(c["prompt"]) if c["prompt"].isdigit() else None for c in code]
        report.code_cells = len(code)
        report.execution_counts = counts
        report.executed = sum(c is not None for c in counts)
        report.last_executed = max(
            (i + 1 for i, c in enumerate(counts) if c is not None), default=0
        )
        report.errors, report.stderr = got["errors"], got["stderr"]
        report.figures, report.widgets = got["figures"], got["widgets"]
        report.console_errors = list(getattr(page, "console_errors", []))
        report.dialogs = list(getattr(page, "dialogs", []))
        return report

    def screenshot(self, page, folder: Path | None, name: str) -> list[str]:
        """The whole notebook as one image (the viewport stretched to its height), and each
        figure and widget output as its own; into `folder` and $TOXIGS_SCREENSHOTS if set."""
        folders = [Path(f) for f in (folder, os.environ.get(SCREENSHOTS_ENV)) if f]
        if not folders:
            return []
        for f in folders:
            f.mkdir(parents=True, exist_ok=True)
        first, saved = folders[0], []
        name = _safe(name)
        w, h = self.viewport
        height = page.evaluate(
            """(s) => { const o = document.querySelector(s + ' .jp-WindowedPanel-outer')
                 || document.querySelector(s + ' .jp-Notebook');
                 return o ? o.scrollHeight : 0; }""",
            PANEL,
        )
        try:
            page.set_viewport_size({"width": w, "height": int(min(max(h, height + 200), 16000))})
            page.wait_for_timeout(800)
            path = first / f"{name}.png"
            page.screenshot(path=str(path), full_page=True)
            saved.append(path)
        finally:
            page.set_viewport_size({"width": w, "height": h})
            page.wait_for_timeout(300)
        widget = f".jp-OutputArea-child > {OUTPUT}:has(> {WIDGET})"  # a top-level widget output
        for kind, selector in (("figure", PLOT), ("widget", widget)):
            items = page.locator(f"{PANEL} {selector}")
            for i in range(min(items.count(), 50)):
                path = first / f"{name}-{kind}-{i + 1:02d}.png"
                with contextlib.suppress(Exception):
                    items.nth(i).screenshot(path=str(path), timeout=10_000)
                    saved.append(path)
        for f in folders[1:]:
            for path in saved:
                shutil.copy2(path, f / path.name)
        return [str(p) for p in saved]

    def run_all(
        self,
        notebook: str,  # a path under the root folder, e.g. "nbs/00_checks.ipynb"
        timeout: float = 600,  # for every cell to finish
        screenshots: Path | None = None,  # a folder for the screenshots
        close: bool = False,  # close the page at the end (else report.page stays open)
    ) -> Report:
        "Open `notebook`, Run All Cells through the menu, wait for the end; say what it showed."
        clock = [time.monotonic()]

        def lap() -> float:
            clock.append(time.monotonic())
            return round(clock[-1] - clock[-2], 1)

        page = self.open(notebook, timeout=min(timeout, 180))
        timings = {"open": lap()}
        before = self._prompts(page)
        self.run_all_cells(page)
        finished = self.wait_done(page, before, timeout)
        timings["run"] = lap()
        self.settle(page)
        timings["settle"] = lap()
        report = self.collect(page, notebook)
        report.finished, report.seconds = finished, timings["run"]
        report.screenshots = self.screenshot(page, screenshots, Path(notebook).stem)
        timings["screenshots"] = lap()
        report.timings = timings
        if close:
            self.close(page)
            report.page = None
        return report

    def close(self, page):
        "Close a page from `open` or `run_all` and shut its notebook's kernel down."
        notebook = getattr(page, "notebook", None)
        with contextlib.suppress(Exception):
            page.close()
        if notebook:
            self.shutdown(notebook)

    def shutdown(self, notebook: str | None = None):
        "Shut down the kernel of `notebook` (a path under the root folder), or every kernel."
        try:
            sessions = json.loads(self._get("/api/sessions")[1])
        except (urllib.error.URLError, OSError, ValueError):
            return
        for s in sessions:
            if notebook is None or s.get("path") == notebook.lstrip("/"):
                with contextlib.suppress(urllib.error.URLError, OSError):
                    self._get(f"/api/sessions/{s['id']}", method="DELETE")

    # --- widgets ------------------------------------------------------------------------
    def dropdown(self, page, label: str):
        "The <select> of the ipywidgets Dropdown whose description is `label`."
        box = page.locator(f"{PANEL} .widget-dropdown").filter(
            has=page.locator(".widget-label", has_text=re.compile(rf"^\s*{re.escape(label)}\s*$"))
        )
        return box.first.locator("select")

    def select_dropdown(self, page, label: str, option: str, timeout: float = 60) -> bool:
        """Choose `option` in the Dropdown described `label`, through the browser; wait until
        the plotly figures in the same cell's output have redrawn and settled (the kernel idle,
        their data unchanged for a second). True if they then show other data than before,
        False if they still showed the same at `timeout` (nothing redrew, or to the same)."""
        select = self.dropdown(page, label)
        select.wait_for(timeout=timeout * 1000)
        # the cell's own output area: the farthest one up (an Output widget has its own)
        area = select.locator(
            "xpath=ancestor::div[contains(concat(' ', normalize-space(@class), ' '),"
            " ' jp-OutputArea ')][last()]"
        )
        before = area.evaluate(_FIGURE_STATE)
        select.select_option(label=option)
        deadline = time.monotonic() + timeout
        last, calm = None, 0
        while time.monotonic() < deadline:
            page.wait_for_timeout(300)
            now = area.evaluate(_FIGURE_STATE)
            idle = self._kernel_status(page) == "idle"
            calm = calm + 1 if idle and now == last else 0
            last = now
            if calm >= 3 and now and now != before:
                return True
        return False

    def options(self, page, label: str) -> list[str]:
        "The options of the Dropdown described `label`, as shown."
        return self.dropdown(page, label).evaluate("s => [...s.options].map(o => o.text)")


@contextlib.contextmanager
def jupyterlab(
    source: Path = REPO,  # the repository whose nbs/ and settings.ini are copied
    workdir: Path | None = None,  # where the copy, the settings and the log go (a tmp_path)
    copies: dict | None = None,  # more to copy, {from (in source): to (in the project)}
    **kwargs,  # for JupyterLab: pythonpath, startup_timeout, viewport, env
):
    """A JupyterLab on a copy of `source`'s notebooks (`workdir/project`, its root folder;
    its settings, runtime files and jupyterlab.log in `workdir/lab`), stopped at the end."""
    own = workdir is None
    workdir = Path(workdir or tempfile.mkdtemp(prefix="toxigs-lab-"))
    project = copy_project(workdir, source, copies)
    lab = JupyterLab(project, workdir=workdir / "lab", **kwargs)
    (workdir / "lab").mkdir(parents=True, exist_ok=True)
    try:
        yield lab.start()
    finally:
        lab.stop()
        if own:
            shutil.rmtree(workdir, ignore_errors=True)
