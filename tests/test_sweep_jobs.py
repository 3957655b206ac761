"""The sweep's jobs on submitit: each run in its own process (local executor), the base trained once,
a second call that runs nothing, a killed job resumed by the next call, and the Slurm submission
(the base, the unlearning array after it, the comparison after that) as sbatch receives it."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

SWEEP = [sys.executable, "-c", "from toxigs.sweep import main; main()"]  # what toxigs-sweep runs
QUICK = ["--base-steps", "20", "--k", "1", "--n-prompts", "2", "--no-compare"]


def sweep(*args, timeout=600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*SWEEP, *args], capture_output=True, text=True, timeout=timeout, **kwargs)


def job_logs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / ".submitit").glob("*_log.out"))


def test_local_jobs_run_as_separate_processes_the_base_once_and_again_nothing(tmp_path):
    run_dir = tmp_path / "runs"
    args = ["--run-dir", str(run_dir), "--methods", "idkdpo", "idkdpo_pcgrad", "--steps", "4", *QUICK,
            "--executor", "local", "--parallel", "2"]
    dry = sweep(*args, "--dry-run")
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert re.search(r"idkdpo_pcgrad-seed0\s+unlearn\s+base\s+new", dry.stdout), dry.stdout
    assert not (run_dir / "base").exists()  # a dry run trains nothing
    first = sweep(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    # three jobs (the base, two methods), each a process of its own, none the sweep's
    job_ids = {log.name.split("_")[0] for log in job_logs(run_dir)}
    assert len(job_ids) == 3, job_ids
    for name in ("base", "idkdpo-seed0", "idkdpo_pcgrad-seed0"):
        assert json.loads((run_dir / name / "results.json").read_text())["toxicity"]["n_prompts"] == 2
    # the base was trained once, before the unlearning runs started (they did not train it again)
    base_written = (run_dir / "base" / "metrics.jsonl").stat().st_mtime
    assert len((run_dir / "base" / "metrics.jsonl").read_text().splitlines()) == 20
    for name in ("idkdpo-seed0", "idkdpo_pcgrad-seed0"):
        assert (run_dir / name / "config.json").stat().st_mtime > base_written
    written = {p: p.stat().st_mtime for p in run_dir.rglob("*.json*")}
    again = sweep(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "every job is done: nothing to run" in again.stdout, again.stdout
    assert re.search(r"idkdpo-seed0\s+unlearn\s+base\s+done", again.stdout), again.stdout
    assert {p: p.stat().st_mtime for p in run_dir.rglob("*.json*")} == written
    assert {log.name.split("_")[0] for log in job_logs(run_dir)} == job_ids  # no job submitted


def test_a_job_killed_mid_run_is_resumed_by_the_next_call(tmp_path):
    run_dir = tmp_path / "runs"
    args = ["--run-dir", str(run_dir), "--methods", "idkdpo", "--steps", "80", "--save-every", "5", *QUICK]
    driver = subprocess.Popen([*SWEEP, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    checkpoints = run_dir / "idkdpo-seed0" / "checkpoints"
    deadline = time.time() + 400
    while not list(checkpoints.glob("step-*/state.json")) and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGKILL)  # the sweep and its job, as a lost node or a kill -9 would
    driver.wait()
    assert list(checkpoints.glob("step-*/state.json")), "the job never checkpointed"
    assert not (run_dir / "idkdpo-seed0" / "summary.json").exists()
    dry = sweep(*args, "--dry-run")
    match = re.search(r"idkdpo-seed0\s+unlearn\s+base\s+resume from step (\d+)", dry.stdout)
    assert match, dry.stdout
    resumed = sweep(*args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((run_dir / "idkdpo-seed0" / "summary.json").read_text())
    assert summary["resumed_from_step"] == int(match.group(1)) >= 5
    steps = [json.loads(line)["step"] for line in (run_dir / "idkdpo-seed0" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 81))
    assert (run_dir / "idkdpo-seed0" / "results.json").exists()


FAKE_SBATCH = """#!/bin/sh
# records what toxigs would give Slurm, and answers as sbatch does
n=$(ls "$SBATCH_LOG" | wc -l)
cp "$1" "$SBATCH_LOG/$n.sh"
echo "Submitted batch job $((1001 + n))"
"""


def test_slurm_gets_the_base_then_the_array_after_it_then_the_comparison(tmp_path):
    bin_dir, log = tmp_path / "bin", tmp_path / "sbatch"
    bin_dir.mkdir()
    log.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit looks for it; nothing runs here
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SBATCH_LOG": str(log)}
    run_dir = tmp_path / "runs"
    out = sweep("--run-dir", str(run_dir), "--methods", "idkdpo", "npo", "--seeds", "0", "1", "--steps", "3",
                "--executor", "slurm", "--partition", "gpu", "--gpus", "1", "--parallel", "3", "--time", "90",
                env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    scripts = [(log / f"{i}.sh").read_text() for i in range(len(list(log.iterdir())))]
    assert len(scripts) == 3, out.stdout  # the base, one array of 4 runs, the comparison
    base, array, compare = scripts
    for script in scripts:
        assert "#SBATCH --partition=gpu" in script and "#SBATCH --time=90" in script
    assert "#SBATCH --gpus-per-node=1" in base and "--dependency" not in base
    assert "#SBATCH --array=0-3%3" in array and "#SBATCH --dependency=afterok:1001" in array
    assert "#SBATCH --dependency=afterok:1002" in compare
    assert "npo-seed1: Slurm job 1002_3" in out.stdout, out.stdout
    assert not (run_dir / "base").exists()  # nothing ran here


def test_a_failed_job_is_listed_with_the_end_of_its_log_and_the_rest_waits(tmp_path):
    run_dir = tmp_path / "runs"
    run_dir.mkdir()
    (run_dir / "base").write_text("not a run directory")  # the base job cannot make its run
    out = sweep("--run-dir", str(run_dir), "--methods", "idkdpo", "--steps", "2", *QUICK)
    assert out.returncode != 0
    assert "FAILED base (job " in out.stdout and "the end of its log" in out.stdout, out.stdout
    assert "base" in out.stdout.split("the end of its log:")[1]  # the job's own error, from its log
    assert "toxigs-sweep: 1 job(s) failed: base" in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert not (run_dir / "idkdpo-seed0").exists()  # the unlearning job waits for its base


def test_the_debug_executor_runs_the_jobs_in_the_calling_process(tmp_path):
    run_dir = tmp_path / "runs"
    out = sweep("--run-dir", str(run_dir), "--methods", "idkdpo", "--steps", "2", *QUICK, "--executor", "debug")
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((run_dir / "idkdpo-seed0" / "results.json").read_text())["toxicity"]["n_prompts"] == 2
    # submitit's debug jobs (in this process), not job processes
    assert job_logs(run_dir) and all(log.name.startswith("DEBUG_") for log in job_logs(run_dir))
