"""The attacks on the embedded default: relearning brings a lightly unlearned run's toxicity back
towards the base's; quantization runs on the same model and its mechanism is a share; on real
ToxiGen data the relearn sets share no text with the unlearned forget set or the evaluation."""
import math
from pathlib import Path

import pytest
import torch

from toxigs.attacks import equal_weight_share, quantize_weights, recovery, relearn_attack, relearn_records
from toxigs.data import embedded_eval_prompts, load_records, split_records
from toxigs.evaluate import TOXIGEN_HELD_OUT, evaluate_run, evaluation_prompts, generate_continuations, load_scorer
from toxigs.models import load_model, load_tokenizer
from toxigs.train import TrainConfig, final_checkpoint, run

pytest.importorskip("optimum.quanto")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    "The embedded base and a lightly unlearned GradDiff run (10 steps), with their tokenizer."
    config = TrainConfig(run_dir=str(tmp_path_factory.mktemp("runs")), method="graddiff", steps=10)
    run(config, progress=False)
    load = lambda path: load_model(str(final_checkpoint(path))).eval()
    return load(config.base().path), load(config.path), load_tokenizer(str(final_checkpoint(config.path))), config


def mean_toxicity(model, tokenizer) -> float:
    "The offline scorer's mean over 4 sampled continuations of each embedded evaluation prompt."
    continuations = generate_continuations(model, tokenizer, embedded_eval_prompts(), k=4, seed=0)
    scores = load_scorer("offline")([text for group in continuations for text in group])
    return sum(scores) / len(scores)


def test_relearning_brings_toxicity_back(models):
    base, unlearned, tokenizer, config = models
    splits = split_records(load_records(config.data), config.nonmember_fraction, config.data_seed,
                           config.relearn_fraction)
    relearn = relearn_records("heldout", splits, embedded_eval_prompts())  # learned, never unlearned
    forget_texts = {r["generation"] for r in splits.forget}
    prompts = set(embedded_eval_prompts())
    assert relearn and not forget_texts & {r["generation"] for r in relearn}
    assert not prompts & {r["prompt"] for r in relearn} and not prompts & {r["generation"] for r in relearn}

    toxicity = lambda model: {"toxicity": mean_toxicity(model, tokenizer)}
    rows = relearn_attack(unlearned, tokenizer, relearn, toxicity, step_counts=(0, 25), lr=1e-3, batch_size=8)
    before, after, at_base = rows[0]["toxicity"], rows[1]["toxicity"], mean_toxicity(base, tokenizer)
    assert before < at_base, "the run did not unlearn at all"
    gained = recovery(after, before, at_base)
    assert after > before and gained > 0.1, (before, after, at_base, gained)
    print(f"toxicity: base {at_base:.3f}, unlearned {before:.3f}, relearned (25 steps) {after:.3f}; recovery {gained:.2f}")


def test_quantization_on_the_embedded_run(models):
    base, unlearned, tokenizer, _ = models
    share = equal_weight_share(unlearned, base, 4)
    assert 0.0 <= share < 1.0  # the run moved some weights across a 4-bit step
    assert equal_weight_share(unlearned, base, 8) <= share  # a finer grid keeps more of the update
    attacked = quantize_weights(unlearned, 4)
    value = mean_toxicity(attacked, tokenizer)
    assert math.isfinite(value) and 0.0 <= value <= 1.0


def test_evaluate_run_with_the_quantization_attacks(models):
    _, _, _, config = models
    results = evaluate_run(config.path, k=2, n_prompts=4, attacks=["quant8", "quant4"], verbose=False)
    for name in ("quant8", "quant4"):
        attacked = results["attacks"][name]
        assert set(attacked) == {"toxicity", "per_prompt_toxicity", "perplexity", "membership",
                                 "equal_codes_with_base", "wall_time_s"}
        assert len(attacked["per_prompt_toxicity"]) == 4
        assert 0.0 <= attacked["equal_codes_with_base"] <= 1.0 and attacked["wall_time_s"] > 0
        assert 0.0 <= attacked["toxicity"]["mean_toxicity"] <= 1.0
    shares = {name: results["attacks"][name]["equal_codes_with_base"] for name in ("quant8", "quant4")}
    assert shares["quant8"] <= shares["quant4"], shares  # a finer grid keeps more of the update
    with pytest.raises(ValueError, match="relearn, quant8, quant4"):
        evaluate_run(config.path, attacks=["quant2"], verbose=False)


def test_evaluate_run_with_the_relearning_attack(models):
    "The grid's rows, the strongest learning rate at each step count, and toxicity back up."
    _, _, _, config = models
    steps, lrs = [0, 10, 25], [1e-4, 1e-3]
    results = evaluate_run(config.path, k=4, n_prompts=8, attacks=["relearn"], relearn_steps=steps,
                           relearn_lrs=lrs, relearn_k=3, verbose=False)
    attack = results["attacks"]["relearn"]
    assert [(r["lr"], r["steps"]) for r in attack["rows"]] == [(lr, n) for lr in lrs for n in steps]
    mean = lambda row: row["toxicity"]["mean_toxicity"]
    for n, best in zip(steps, attack["strongest"]):
        same = [r for r in attack["rows"] if r["steps"] == n]
        assert best["steps"] == n and mean(best) == max(map(mean, same))
    assert all(r["toxicity"]["n_continuations"] == 8 * 3 for r in attack["rows"])  # relearn_k
    assert (attack["steps"], attack["n_records"] > 0, attack["relearn_set"]) == (25, True, "heldout")
    start = [r for r in attack["rows"] if r["steps"] == 0]
    assert all(mean(r) == mean(start[0]) for r in start)  # step 0: one measurement for the grid
    assert mean(attack) > mean(start[0]) + 0.1, (mean(start[0]), mean(attack))
    assert attack["wall_time_s"] > sum(results["timing_s"].values()) / 10
    with pytest.raises(ValueError, match="relearn_steps must be distinct"):
        evaluate_run(config.path, attacks=["relearn"], relearn_steps=[10, 0], verbose=False)
    with pytest.raises(ValueError, match="heldout, other_groups"):
        evaluate_run(config.path, attacks=["relearn"], relearn_set="forget", verbose=False)


TOXIGEN = Path(__file__).resolve().parents[2] / "shared" / "data" / "toxigen" / "prompts"


@pytest.mark.skipif(not TOXIGEN.is_dir(), reason="needs ../shared/data/toxigen beside the repository")
def test_relearn_sets_share_no_text_with_unlearning_or_evaluation():
    "On ToxiGen, where prompts are lists of the same statements the generations are drawn from."
    splits = split_records(load_records(str(TOXIGEN)), 0.25, 0, relearn_fraction=0.1)
    unlearned = {r["generation"] for r in splits.forget}
    every_group = evaluation_prompts(str(TOXIGEN), splits, n_prompts=48, seed=0)
    # other groups: as when a toxigen-lr scorer keeps the prompts to the groups it never saw
    held_out = evaluation_prompts(str(TOXIGEN), splits, n_prompts=48, seed=0, groups=TOXIGEN_HELD_OUT)
    for name, prompts in (("heldout", every_group), ("other_groups", held_out)):
        relearn = relearn_records(name, splits, prompts)
        texts = {r["generation"] for r in relearn}
        assert texts and not texts & unlearned
        assert not any(text in prompt for text in texts for prompt in prompts)
        assert not {r["prompt"] for r in relearn} & set(prompts)
        assert not texts & {r["generation"] for r in splits.nonmember}  # membership stays fair
    prompted = {r["group"] for r in splits.nonmember + splits.nonmember_retain if r["prompt"] in set(held_out)}
    others = {r["group"] for r in relearn_records("other_groups", splits, held_out)}
    assert prompted == set(TOXIGEN_HELD_OUT) and others and not others & prompted, (others, prompted)
    with pytest.raises(ValueError, match="choose prompt_groups"):  # every group is prompted
        relearn_records("other_groups", splits, every_group)
    # the split held out text that evaluation prompts quote, and the set dropped it
    quoted = {r["generation"] for r in splits.relearn if any(r["generation"] in p for p in every_group)}
    assert quoted and not quoted & {r["generation"] for r in relearn_records("heldout", splits, every_group)}
