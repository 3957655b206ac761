"""Step time and peak memory of unlearning: full fine-tuning vs LoRA, with vs without the cached
reference, with vs without gradient checkpointing, each as a ratio to full fine-tuning with the
reference computed on every step (what toxigs did before), measured in one run.

Every setting trains in a fresh process (peak resident memory is a per-process high-water mark)
from one shared base, and its median step time (warm-up steps skipped) and peak memory are read
back from its `metrics.jsonl` and `summary.json`. The default model is the 7M-parameter GPT-2 of
docs/toxigen-cpu (4 blocks of width 128, the GPT-2 tokenizer, random weights) on the ToxiGen
prompts of ../shared; `--model gemma-3-270m-offline` takes the real one.

    python bench/memory.py                        # 7M GPT-2, CPU: 14 min on 2 cores
    python bench/memory.py --model gemma-3-270m-offline --batch-size 4 --steps 5
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from toxigs.models import init_model_folder
from toxigs.train import TrainConfig, read_metrics, run

SHARED = Path(__file__).resolve().parents[2] / "shared"
# name: the TrainConfig fields that differ from full fine-tuning with the reference on every step
SETTINGS = {
    "full": dict(cache_reference=False),
    "full + cache": dict(),
    "full + cache + checkpointing": dict(gradient_checkpointing=True),
    "LoRA": dict(lora_rank=8, cache_reference=False),
    "LoRA + cache": dict(lora_rank=8),
    "LoRA + cache + checkpointing": dict(lora_rank=8, gradient_checkpointing=True),
}
RUN = (
    "import json, sys; from toxigs.train import TrainConfig, run; "
    "run(TrainConfig(**json.loads(sys.argv[1])), progress=False)"
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="", help="a model name or folder (default: the 7M GPT-2)"
    )
    parser.add_argument("--data", default=str(SHARED / "data/toxigen/prompts"))
    parser.add_argument("--method", default="idkdpo_pcgrad")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6, help="unlearning steps of each setting")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the median")
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def measure(config: TrainConfig, warmup: int) -> dict:
    "Train `config` in a fresh process; its median step time and peak memory."
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    subprocess.run([sys.executable, "-c", RUN, json.dumps(vars(config))], check=True, env=env)
    summary = json.loads((config.path / "summary.json").read_text())
    times = [m["step_time_s"] for m in read_metrics(config.path)][warmup:]
    return {"step_s": statistics.median(times), **summary}


def gpt2_7m(root: Path) -> str:
    "The 7M-parameter GPT-2 of docs/toxigen-cpu, random weights, in a folder."
    tokenizer = str(SHARED / "assets/gpt2-tokenizer")
    return str(init_model_folder(root / "gpt2-7m", tokenizer, n_layer=4, n_embd=128, n_head=4))


def print_table(args, rows: dict):
    "One line per setting: its step time and peak memory, and both as ratios to `full`."
    first = rows["full"]
    gpu = first["peak_gpu_memory_gib"] is not None
    memory = "peak_gpu_memory_gib" if gpu else "peak_rss_gib"
    print(
        f"{args.method} on {first['device']} ({first['device_name'] or 'CPU'}), "
        f"model {args.model or 'gpt2-7m'}, batch {args.batch_size}, "
        f"median of steps {args.warmup + 1}-{args.steps}; memory: "
        f"{'peak GPU memory allocated' if gpu else 'peak resident set of the process'}"
    )
    header = f"{'trained params':>14} {'step s':>8} {'x full':>7} {'memory GiB':>10} {'x full':>7}"
    print(f"{'setting':30} {header}")
    for name, row in rows.items():
        step, peak = row["step_s"], row[memory]
        print(
            f"{name:30} {row['trainable_parameters']:>14,} {step:>8.3f} "
            f"{step / first['step_s']:>7.2f} {peak:>10.3f} {peak / first[memory]:>7.2f}"
        )


def main(argv=None):
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        common = dict(
            model=args.model or gpt2_7m(root),
            data=args.data,
            method=args.method,
            batch_size=args.batch_size,
            steps=args.steps,
            base_steps=1,
            device=args.device,
            lr=1e-4,
        )
        run(TrainConfig(run_dir=str(root / "base-run"), **common).base(), progress=False)
        rows = {}
        for name, fields in SETTINGS.items():  # every setting unlearns from the one shared base
            run_dir = root / name.replace(" + ", "-").replace(" ", "-")
            run_dir.mkdir(parents=True)
            os.symlink(root / "base-run" / "base", run_dir / "base")
            rows[name] = measure(TrainConfig(run_dir=str(run_dir), **common, **fields), args.warmup)
        print_table(args, rows)


if __name__ == "__main__":
    main()
