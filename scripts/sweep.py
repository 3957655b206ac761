"""The method comparison in one command: fine-tune the base once, run every method with the same seed,
data and compute, evaluate each run (and the base), then render nbs/compare.ipynb over the runs.

    python scripts/sweep.py                                   # the embedded demo, offline, minutes on a CPU
    python scripts/sweep.py --run-dir runs/toxigen --data ../shared/data/toxigen/prompts \\
        --model <gpt2-architecture folder> --utility-text ../shared/data/wikitext-2/test.txt --steps 200

Finished runs and evaluations are kept, so an interrupted sweep continues where it stopped. With
`--publish docs/<study>` it also writes the experiment's small files there (no checkpoints; see
toxigs.analysis.summarize_experiment) and renders the comparison from them, ready to commit.
"""
import argparse
import json
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

from toxigs.analysis import summarize_experiment
from toxigs.evaluate import RESULTS_FILE, check_evaluation_arguments, evaluate_run
from toxigs.train import TrainConfig, run

PAPER_METHODS = ["graddiff", "graddiff_pcgrad", "idkdpo", "idkdpo_pcgrad"]
VARIANTS = ["graddiff_pcgrad_retain", "graddiff_sago", "idkdpo_pcgrad_retain", "idkdpo_sago"]
REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default="runs/embedded", help="experiment folder (base/ and one folder per method and seed)")
    parser.add_argument("--methods", nargs="+", default=PAPER_METHODS + VARIANTS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--scorer", default="offline", help="toxicity scorer: offline, toxigen-lr:<folder>[?held_out=...], detoxify, detoxify:<checkpoint>")
    parser.add_argument("--utility-text", default="auto", help="auto, embedded, wikitext or a WikiText-layout file")
    parser.add_argument("--k", type=int, default=25, help="continuations per evaluation prompt")
    parser.add_argument("--n-prompts", type=int, default=100)
    parser.add_argument("--max-documents", type=int, default=None, help="utility documents kept for word perplexity")
    parser.add_argument("--n-membership", type=int, default=None, help="members and non-members kept for membership inference, each")
    parser.add_argument("--extra-scorers", nargs="+", default=(), help="more scorers of the same continuations (results.json toxicity_by_scorer)")
    parser.add_argument("--prompt-groups", nargs="+", default=None, help="evaluation prompts from these groups only (a toxigen-lr scorer needs its held-out groups)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-compare", action="store_true", help="skip rendering compare.ipynb")
    parser.add_argument("--publish", default=None, help="also summarize the experiment into this folder (small files, no checkpoints) and render the comparison there")
    # every TrainConfig field that is not set above can be given as --field value
    known = {"run_dir", "method", "seed", "device"}
    for f in fields(TrainConfig):
        if f.name not in known:
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=(lambda s: s.lower() in ("1", "true", "yes")) if f.type in ("bool", bool) else
                                (f.type if callable(f.type) else {"int": int, "float": float, "str": str}.get(f.type, str)), default=None)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
                 if f.name not in ("run_dir", "method", "seed", "device") and getattr(args, f.name, None) is not None}
    evaluation = dict(scorer=args.scorer, utility_text=args.utility_text, k=args.k, n_prompts=args.n_prompts,
                      max_documents=args.max_documents, n_membership=args.n_membership,
                      prompt_groups=args.prompt_groups, extra_scorers=args.extra_scorers, device=args.device)
    # every configuration and the evaluation settings are checked before anything is trained
    configs = [TrainConfig(run_dir=args.run_dir, method=method, seed=seed, device=args.device, **overrides)
               for seed in args.seeds for method in args.methods]
    check_evaluation_arguments(**evaluation)
    started = time.time()
    runs = []
    for config in configs:
        runs.append(run(config, progress=False))
        print(f"{config.path}: trained")
    runs.insert(0, TrainConfig(run_dir=args.run_dir, **overrides).base().path)
    for path in runs:
        if (path / RESULTS_FILE).exists():
            print(f"{path}: already evaluated"); continue
        results = evaluate_run(path, verbose=False, **evaluation)
        print(f"{path}: mean toxicity {results['toxicity']['mean_toxicity']:.3f}, "
              f"word perplexity {results['perplexity']['word_perplexity']:.4g}, MIA AUC {results['membership']['auc']:.3f}")
    print(f"trained and evaluated {len(runs)} runs in {time.time() - started:.0f} s")
    shown = Path(args.run_dir)
    if args.publish:
        shown = summarize_experiment(args.run_dir, args.publish)
        print(f"{shown}: the runs' small files and weight-space tables")
    if not args.no_compare:
        out = shown / "compare.ipynb"
        subprocess.run([sys.executable, "-m", "papermill", str(REPO / "nbs" / "compare.ipynb"), str(out),
                        "-p", "runs_dir", str(shown)], check=True)
        print(f"comparison: {out}")


if __name__ == "__main__":
    try: main()
    except (ValueError, FileNotFoundError) as error:  # a bad setting or path: one line, not a traceback
        sys.exit(f"sweep: {error}")
