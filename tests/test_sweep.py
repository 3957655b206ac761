"""The sweep is one command: base once, every method, each evaluated, and the comparison rendered with its figures."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SWEEP = [sys.executable, "-c", "from toxigs.sweep import main; main()"]  # what the toxigs-sweep script runs


def test_sweep_trains_evaluates_and_renders_the_comparison(tmp_path):
    run_dir = tmp_path / "runs"
    # enough fine-tuning, unlearning and prompts that unlearning's gap is significant: recovery is
    # (rightly) left out where it is not
    command = [*SWEEP, "--run-dir", str(run_dir), "--methods", "idkdpo", "idkdpo_pcgrad",
               "--steps", "10", "--base-steps", "200", "--k", "2", "--n-prompts", "8",
               "--attacks", "relearn", "quant4", "--relearn-steps", "0", "5", "--relearn-lrs", "1e-3",
               "--relearn-k", "2"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = ["base", "idkdpo-seed0", "idkdpo_pcgrad-seed0"]
    for name in runs:
        results = json.loads((run_dir / name / "results.json").read_text())
        assert results["toxicity"]["n_prompts"] == 8 and results["settings"]["k"] == 2
    assert json.loads((run_dir / "idkdpo-seed0" / "config.json").read_text())["steps"] == 10
    assert len((run_dir / "base" / "metrics.jsonl").read_text().splitlines()) == 200
    comparison = run_dir / "comparison"
    for figure in ("weight_distances", "surgery_vs_sum", "conflict", "tradeoff", "relearn_curves", "recovery"):
        assert (comparison / f"{figure}.html").stat().st_size > 0
    assert (run_dir / "compare.ipynb").exists()
    table = (comparison / "results.md").read_text()
    assert table.splitlines()[2].startswith("| base |") and "idkdpo_pcgrad" in table
    # the robustness table: every run attacked (the base as the control), a recovery per method
    robust = [line.split(" | ") for line in (comparison / "robustness.md").read_text().splitlines()[2:]]
    assert [row[0] for row in robust] == ["| base", "| idkdpo", "| idkdpo_pcgrad"], robust
    header = (comparison / "robustness.md").read_text().splitlines()[0]
    assert "relearn recovery" in header and "quant4 recovery" in header
    for row in robust[1:]:
        recoveries = [cell for name, cell in zip(header.split(" | "), row) if "recovery" in name]
        assert len(recoveries) == 2 and all(cell.strip(" |") != "–" for cell in recoveries), row
    # a second call finds everything done, and publishes the small files with the same comparison
    published = tmp_path / "published"
    evaluated = {name: (run_dir / name / "results.json").stat().st_mtime for name in runs}
    again = subprocess.run(command + ["--publish", str(published)], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    # every run done (neither trained nor evaluated again), only the comparison runs
    states = {line.split()[0]: line.split()[-1] for line in again.stdout.splitlines()[1:5]}
    assert states == {"base": "done", "idkdpo-seed0": "done", "idkdpo_pcgrad-seed0": "done", "compare": "new"}, again.stdout
    assert {name: (run_dir / name / "results.json").stat().st_mtime for name in runs} == evaluated
    assert sorted(p.name for p in published.iterdir()) == sorted(runs + ["weight_distances.csv", "surgery_vs_sum.csv", "comparison", "compare.ipynb"])
    assert not list(published.rglob("*.safetensors"))
    assert (published / "comparison" / "results.md").read_text() == table
