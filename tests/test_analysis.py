"""Analyses on checkpoints beyond the notebook's constructed experiment: runs trained by toxigs.train
(weight statistics against an independent in-memory computation from `named_parameters()`),
sharded and bf16 checkpoints, mismatched models, and the papermill comparison notebook."""
import importlib.util
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from toxigs.analysis import (SYNTHETIC_C, SYNTHETIC_RUNS, CheckpointWeights, _tiny_gpt2, compare_updates, conflict_frame,
                             distance_matrix, find_runs, module_group, results_frame, synthetic_experiment)
from toxigs.analysis import (MAX_ROWS, ONE_SEED_NOTE, TOXICITY_METRICS, clipped_title_lines,
                             experiment_distances, experiment_twins, layer_conflict_frame,
                             metric_columns, plot_conflict, plot_distances, plot_layer_conflict,
                             plot_tradeoff, plot_update_comparison, surgery_pairs, tick_label)
from toxigs.models import load_model
from toxigs.train import TrainConfig, final_checkpoint, read_metrics, run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    "The embedded base (a few steps) and two short unlearning runs of one experiment."
    runs_dir = tmp_path_factory.mktemp("runs")
    for method in ("idkdpo", "idkdpo_pcgrad"):
        run(TrainConfig(run_dir=str(runs_dir), method=method, steps=3, base_steps=5, lr=1e-2), progress=False)
    return runs_dir


def _flat_params(path: Path) -> dict[str, torch.Tensor]:
    "Every parameter of a checkpoint, loaded whole, tied ones once (the reference computation)."
    return {n: p.detach().double().reshape(-1) for n, p in load_model(str(path)).named_parameters()}


def test_trained_runs_match_an_in_memory_computation(trained):
    runs = find_runs(trained)
    assert [r.name for r in runs] == ["base", "idkdpo-seed0", "idkdpo_pcgrad-seed0"]
    params = {r.name: _flat_params(final_checkpoint(r.path)) for r in runs}
    flat = {name: torch.cat(list(p.values())) for name, p in params.items()}
    n = flat["base"].numel()
    assert n == sum(p.numel() for p in load_model("embedded").parameters())  # lm_head (tied) counted once
    distances = distance_matrix(trained)
    for a in distances.index:
        for b in distances.columns:
            assert math.isclose(distances.loc[a, b], float((flat[a] - flat[b]).pow(2).mean().sqrt()), rel_tol=1e-6, abs_tol=1e-12)
    assert distances.loc["base", "idkdpo-seed0"] > 0

    by_module = compare_updates(runs[2], runs[1], runs[0])
    delta_s = {k: params["idkdpo_pcgrad-seed0"][k] - params["base"][k] for k in params["base"]}
    delta_t = {k: params["idkdpo-seed0"][k] - params["base"][k] for k in params["base"]}
    for group, row in by_module.iterrows():
        names = [k for k in params["base"] if group == "all" or module_group(k) == group]
        ds, dt = torch.cat([delta_s[k] for k in names]), torch.cat([delta_t[k] for k in names])
        assert row.n_params == ds.numel()
        assert math.isclose(row.cosine, float(ds @ dt / (ds.norm() * dt.norm())), rel_tol=1e-6)
        assert math.isclose(row.rms_diff, float((ds - dt).pow(2).mean().sqrt()), rel_tol=1e-6)
        assert math.isclose(row.log_rms_ratio, math.log(float(ds.norm() / dt.norm())), rel_tol=1e-6, abs_tol=1e-9)
    assert "transformer.h.1.mlp" in by_module.index and by_module.index[-1] == "all"


def test_conflict_frame_reads_training_logs(trained):
    frame = conflict_frame(trained, window=2)
    assert sorted(frame.run.unique()) == ["idkdpo-seed0", "idkdpo_pcgrad-seed0"]
    logged = read_metrics(trained / "idkdpo-seed0")
    rows = frame[frame.run == "idkdpo-seed0"]
    assert rows.step.tolist() == [m["step"] for m in logged]
    assert np.allclose(rows.cosine, [m["cosine"] for m in logged])
    assert np.allclose(np.cos(np.radians(rows.angle_deg)), rows.cosine)
    expected = np.convolve([m["conflict"] for m in logged], [0.5, 0.5])[:len(logged)]
    expected[0] = logged[0]["conflict"]
    assert np.allclose(rows.conflict_frequency, expected)


def test_sharded_and_bf16_checkpoints_read_alike(tmp_path):
    model = _tiny_gpt2()
    model.save_pretrained(tmp_path / "whole")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="1KB")
    model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    whole, sharded, bf16 = (CheckpointWeights(tmp_path / name) for name in ("whole", "sharded", "bf16"))
    assert whole.names == sharded.names == bf16.names
    assert all(torch.equal(whole.get(n), sharded.get(n)) for n in whole.names)
    assert bf16.get("transformer.wte.weight").dtype == torch.float32
    distances = distance_matrix({"whole": tmp_path / "whole", "sharded": tmp_path / "sharded", "bf16": tmp_path / "bf16"})
    assert distances.loc["whole", "sharded"] == 0
    assert 0 < distances.loc["whole", "bf16"] < 1e-2  # bf16 rounding only


def test_checkpoints_of_different_models_are_refused(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel
    _tiny_gpt2().save_pretrained(tmp_path / "a")
    GPT2LMHeadModel(GPT2Config(vocab_size=16, n_positions=8, n_embd=8, n_layer=3, n_head=2)).save_pretrained(tmp_path / "deeper")
    GPT2LMHeadModel(GPT2Config(vocab_size=32, n_positions=8, n_embd=8, n_layer=2, n_head=2)).save_pretrained(tmp_path / "wider")
    with pytest.raises(ValueError, match="hold different parameters .* compare runs of one model only"):
        distance_matrix({"a": tmp_path / "a", "deeper": tmp_path / "deeper"})
    with pytest.raises(ValueError, match=r"transformer.wte.weight has shape \[16, 8\] in .* but \[32, 8\]"):
        distance_matrix({"a": tmp_path / "a", "wider": tmp_path / "wider"})


def test_results_frame_skips_unevaluated_runs(tmp_path):
    experiment = synthetic_experiment(tmp_path / "exp", runs=["idkdpo-seed0"])
    (experiment / "idkdpo-seed0" / "results.json").unlink()
    assert results_frame(experiment).run.tolist() == ["base"]
    (experiment / "base" / "results.json").unlink()
    with pytest.raises(FileNotFoundError, match="evaluate them first"):
        results_frame(experiment)


def _static_export_works() -> bool:
    if importlib.util.find_spec("kaleido") is None: return False
    return any(shutil.which(b) for b in ("chromium", "chromium-headless-shell", "google-chrome", "chrome"))


def test_compare_notebook_renders_every_figure(tmp_path):
    "papermill nbs/compare.ipynb on a constructed experiment writes every figure (PNG too where kaleido can run)."
    experiment = synthetic_experiment(tmp_path / "exp")
    formats = "html,png" if _static_export_works() else "html"
    subprocess.run([sys.executable, "-m", "papermill", str(REPO / "nbs" / "compare.ipynb"), str(tmp_path / "out.ipynb"),
                    "-p", "runs_dir", str(experiment), "-p", "out_dir", str(tmp_path / "figures"), "-p", "formats", formats,
                    "--cwd", str(REPO / "nbs")], check=True, capture_output=True)
    figures = ["tradeoff", "weight_distances", "surgery_vs_sum", "conflict", "layer_conflict"]
    for name in figures:
        for fmt in formats.split(","):
            assert (tmp_path / "figures" / f"{name}.{fmt}").stat().st_size > 1000, f"{name}.{fmt}"
    table = (tmp_path / "figures" / "results.md").read_text()
    assert table.splitlines()[2].startswith("| base | 0.3 [0.25, 0.35] | 0.6 [0.55, 0.65] |")
    assert len(table.splitlines()) == 2 + len(SYNTHETIC_RUNS)


@pytest.mark.parametrize("study, runs", [("toxigen-cpu", "runs"), ("gemma-cpu-pilot", ".")])
def test_committed_real_data_comparison_re_renders_from_its_small_files(tmp_path, study, runs):
    "A committed study's summarized runs (no checkpoints) render every figure, and the table is the one its README shows."
    docs = REPO / "docs" / study
    subprocess.run([sys.executable, "-m", "papermill", str(REPO / "nbs" / "compare.ipynb"), str(tmp_path / "out.ipynb"),
                    "-p", "runs_dir", str(docs / runs), "-p", "out_dir", str(tmp_path / "figures"), "-p", "formats", "html",
                    "--cwd", str(REPO / "nbs")], check=True, capture_output=True)
    for name in ["tradeoff", "weight_distances", "surgery_vs_sum", "conflict", "layer_conflict"]:
        assert (tmp_path / "figures" / f"{name}.html").stat().st_size > 1000, name
    table = (tmp_path / "figures" / "results.md").read_text()
    assert table == (docs / "comparison" / "results.md").read_text()
    assert table.strip() in (docs / "README.md").read_text()


@pytest.mark.parametrize("study, runs, last_row", [("toxigen-cpu", "runs", "transformer.ln_f"),
                                                   ("gemma-cpu-pilot", ".", "model.norm")])
def test_committed_study_figures_are_readable(study, runs, last_row):
    "A committed study's figures, from its small files: whole titles, every tick and row named."
    root = REPO / "docs" / study / runs
    per_run, pairs = results_frame(root), surgery_pairs(find_runs(root))
    toxicity = [c for c in metric_columns(per_run) if c.partition("@")[0] in TOXICITY_METRICS]
    for column in toxicity:
        fig = plot_tradeoff(per_run, column)
        assert clipped_title_lines(fig) == [], column
        assert [a.text for a in fig.layout.annotations if a.name == "note"] == [ONE_SEED_NOTE]
        assert len([s for s in fig.layout.shapes if s.type == "line"]) == len(pairs)
        axis = fig.layout.xaxis
        if axis.type == "log":  # every tick labelled with its value, never a bare 2 or 5
            assert list(axis.ticktext) == list(map(tick_label, axis.tickvals))
            assert len(axis.tickvals) >= 3
    twins = plot_update_comparison(experiment_twins(root))
    names = list(twins.layout.xaxis3.tickvals)
    assert len(names) <= MAX_ROWS and names[-1] == last_row and clipped_title_lines(twins) == []
    layers = plot_layer_conflict(layer_conflict_frame(root))
    for panel, heatmap in enumerate(layers.data, start=1):
        axis = layers.layout[f"yaxis{panel if panel > 1 else ''}"]
        assert list(axis.ticktext) == list(heatmap.y) and list(heatmap.y)[-1] == last_row
    distances = plot_distances(experiment_distances(root)).data[0]
    assert all(len(t.split(".")[-1]) == 2 for row in distances.text for t in row)  # one format
    assert "×10" in distances.colorbar.title.text  # and its unit
    assert clipped_title_lines(plot_conflict(conflict_frame(root))) == []
