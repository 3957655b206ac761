"""report_to: every scalar of metrics.jsonl and evaluations.jsonl, read back from the TensorBoard
event files, the W&B offline run and the MLflow file store, equals the JSONL's value at its step."""
import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from toxigs.runs import read_evaluations, read_metrics
from toxigs.tracking import TENSORBOARD_DIR, TRACKING_FILE, scalars

TRAIN = ("import sys, json; from toxigs.train import TrainConfig, run; "
         "run(TrainConfig(**json.loads(sys.argv[1])), progress=False)")


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory) -> Path:
    "A short idkdpo_pcgrad run with evaluations, reporting to all three trackers, their defaults."
    root = tmp_path_factory.mktemp("experiment")
    settings = dict(run_dir=str(root), method="idkdpo_pcgrad", steps=6, base_steps=20, eval_every=3,
                    eval_prompts=2, eval_k=1, eval_examples=16, report_to="tensorboard,wandb,mlflow")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MLFLOW_"))}
    out = subprocess.run([sys.executable, "-c", TRAIN, json.dumps(settings)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return root / "idkdpo_pcgrad-seed0"


def expected(run_dir: Path) -> dict[str, dict[int, float]]:
    "Every scalar the run's JSONL files hold: key -> {step: value}."
    series = {}
    for lines, prefix in ((read_metrics(run_dir), ""), (read_evaluations(run_dir), "eval/")):
        for line in lines:
            for key, value in scalars(line, prefix).items():
                series.setdefault(key, {})[line["step"]] = value
    assert "forget_loss" in series and "eval/toxicity" in series and len(series["eval/toxicity"]) == 3
    return series


def assert_same(logged: dict[str, dict[int, float]], run_dir: Path, rel: float):
    want = expected(run_dir)
    assert logged.keys() >= want.keys(), sorted(want.keys() - logged.keys())
    for key, steps in want.items():
        assert logged[key].keys() == steps.keys(), key
        for step, value in steps.items():
            assert math.isclose(logged[key][step], value, rel_tol=rel, abs_tol=1e-12), (key, step)


def test_tensorboard_event_files_hold_the_jsonl_scalars(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tracked_run / TENSORBOARD_DIR), size_guidance={"scalars": 0})
    events.Reload()
    logged = {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}
    assert_same(logged, tracked_run, rel=1e-6)  # TensorBoard keeps float32


def wandb_history(path: Path) -> list[dict]:
    """The history rows of a W&B transaction log (`.wandb`): a LevelDB-style log of protobuf
    records (7-byte file header, 32 KiB blocks, each record chunk: crc32, length, type)."""
    from wandb.proto import wandb_internal_pb2

    data, rows, chunk, pos, block = path.read_bytes(), [], b"", 7, 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = chunk + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0 and length == 0:
            break
        if kind in (1, 4):  # a whole record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            chunk = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item})
    return rows


def test_the_wandb_offline_run_holds_the_jsonl_scalars(tracked_run):
    ids = json.loads((tracked_run / TRACKING_FILE).read_text())
    [log] = list((tracked_run / "wandb").glob(f"offline-run-*-{ids['wandb']}/run-{ids['wandb']}.wandb"))
    logged = {}
    for row in wandb_history(log):
        for key, value in row.items():
            if not key.startswith("_"):
                logged.setdefault(key, {})[row["_step"]] = value
    assert_same(logged, tracked_run, rel=1e-12)


def test_the_mlflow_file_store_holds_the_jsonl_scalars(tracked_run):
    from mlflow.tracking import MlflowClient

    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    client = MlflowClient(tracking_uri=(tracked_run.parent / "mlruns").as_uri())
    run_id = json.loads((tracked_run / TRACKING_FILE).read_text())["mlflow"]
    run = client.get_run(run_id)
    assert run.info.run_name == tracked_run.name and run.info.status == "FINISHED"
    assert run.data.params["method"] == "idkdpo_pcgrad"
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == tracked_run.parent.name
    logged = {key: {m.step: m.value for m in client.get_metric_history(run_id, key)} for key in run.data.metrics}
    assert_same(logged, tracked_run, rel=1e-12)
