"""The attacks on the embedded default: relearning brings a lightly unlearned run's toxicity back
towards the base's; quantization runs on the same model and its mechanism is a share."""
import math

import pytest
import torch

from toxigs.attacks import equal_weight_share, quantize_weights, recovery, relearn_attack
from toxigs.data import embedded_eval_prompts, load_records, split_records
from toxigs.evaluate import generate_continuations, load_scorer
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
    splits = split_records(load_records(config.data), config.nonmember_fraction, config.data_seed)
    relearn = splits.nonmember  # toxic generations held out of every training set
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
    from toxigs.evaluate import evaluate_run
    _, _, _, config = models
    results = evaluate_run(config.path, k=2, n_prompts=4, attacks=["quant8", "quant4"], verbose=False)
    for name in ("quant8", "quant4"):
        attacked = results["attacks"][name]
        assert set(attacked) == {"toxicity", "perplexity", "membership", "equal_codes_with_base", "wall_time_s"}
        assert 0.0 <= attacked["equal_codes_with_base"] <= 1.0 and attacked["wall_time_s"] > 0
        assert 0.0 <= attacked["toxicity"]["mean_toxicity"] <= 1.0
    shares = {name: results["attacks"][name]["equal_codes_with_base"] for name in ("quant8", "quant4")}
    assert shares["quant8"] <= shares["quant4"], shares  # a finer grid keeps more of the update
    with pytest.raises(ValueError, match="quant8, quant4"):
        evaluate_run(config.path, attacks=["quant2"], verbose=False)
