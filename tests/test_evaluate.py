"""Evaluation on the embedded default: membership inference finds the fine-tuning set, word perplexity
equals an independently computed NLL, toxicity summaries match hand-computed values, and a run
directory is evaluated end to end (library and papermill notebook)."""
import json
import math
import re
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from toxigs.data import collate, embedded_records, embedded_utility_documents, split_records, tokenize_records
from toxigs.evaluate import (evaluate_run, generate_continuations, load_scorer, load_utility_documents, membership_auc,
                             membership_inference, read_generations, read_run_config, toxicity_summary, word_perplexity)
from toxigs.models import load_model, load_tokenizer
from toxigs.train import TrainConfig, run

REPO = Path(__file__).resolve().parents[1]
RUN_CONFIG = {"method": "finetune", "model": "embedded", "data": "embedded", "data_seed": 0, "nonmember_fraction": 0.25,
              "max_length": 256, "seed": 0}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    "The embedded demo's base run, fine-tuned by toxigs.train on the forget + retain members."
    return run(TrainConfig(run_dir=str(tmp_path_factory.mktemp("runs"))).base(), progress=False)


@pytest.fixture(scope="module")
def trained(trained_run):
    final = trained_run / "checkpoints" / "final"
    return load_model(str(final)).eval(), load_tokenizer(str(final))


def test_finetuned_base_has_member_auc_above_chance(trained):
    model, tokenizer = trained
    splits = split_records(embedded_records(), RUN_CONFIG["nonmember_fraction"], RUN_CONFIG["data_seed"])
    result = membership_inference(model, tokenizer, splits.forget, splits.nonmember, n_resamples=200)
    assert result["member_nll"] < result["nonmember_nll"]
    assert result["auc"] > 0.6 and result["auc_ci"][0] > 0.5, result
    assert result["min_k_auc"] > 0.5 and result["zlib_auc"] > 0.5, result
    untrained = membership_inference(load_model("embedded"), tokenizer, splits.forget, splits.nonmember, n_resamples=10)
    assert abs(untrained["auc"] - 0.5) < abs(result["auc"] - 0.5)


def test_membership_auc_is_sklearn_roc_auc_of_negative_nll():
    from sklearn.metrics import roc_auc_score
    rng = np.random.default_rng(0)
    members, nonmembers = rng.normal(1.0, 0.3, 50), rng.normal(1.2, 0.3, 70)
    expected = roc_auc_score([1] * 50 + [0] * 70, -np.r_[members, nonmembers])
    assert membership_auc(members, nonmembers) == pytest.approx(expected)
    # the AUC is the share of (member, non-member) pairs in which the member has the lower NLL
    assert membership_auc(members, nonmembers) == pytest.approx(np.mean(members[:, None] < nonmembers[None, :]))


def test_word_perplexity_equals_exp_of_independent_nll_over_words(trained):
    model, tokenizer = trained
    document = embedded_utility_documents()[1]
    ids = [tokenizer.eos_token_id] + tokenizer(document, add_special_tokens=False)["input_ids"]
    with torch.no_grad():  # one forward pass over the whole document, Hugging Face's own shifted loss
        mean_loss = model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                          labels=torch.tensor([ids])).loss.item()
    # words as lm-eval counts them: pieces between runs of whitespace (+1 at each whitespace end)
    total_nll, n_words = mean_loss * (len(ids) - 1), len(re.split(r"\s+", document))
    result = word_perplexity(model, tokenizer, [document], max_length=256)
    assert result["n_words"] == n_words and result["n_tokens"] == len(ids) - 1
    assert math.log(result["word_perplexity"]) == pytest.approx(total_nll / n_words, rel=1e-5)
    assert math.log(result["token_perplexity"]) == pytest.approx(mean_loss, rel=1e-5)
    assert result["bits_per_byte"] == pytest.approx(total_nll / math.log(2) / len(document.encode("utf-8")), rel=1e-5)


def test_rolling_windows_predict_each_token_once_with_the_window_context(trained):
    model, tokenizer = trained
    text = " ".join(embedded_utility_documents()[2].split()[:40])
    ids = [tokenizer.eos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
    window = 12
    by_hand = 0.0
    with torch.no_grad():  # each token from exactly the window's tokens before it (fewer at the start)
        for position in range(1, len(ids)):
            context = ids[max(0, position - window):position]
            logits = model(input_ids=torch.tensor([context]), attention_mask=torch.ones(1, len(context), dtype=torch.long)).logits[0, -1]
            by_hand -= torch.log_softmax(logits, -1)[ids[position]].item()
    result = word_perplexity(model, tokenizer, [text], max_length=window, stride=1, batch_size=7)
    assert result["n_tokens"] == len(ids) - 1
    assert result["nll"] == pytest.approx(by_hand, rel=1e-5)
    # two documents are scored separately: the sums add up
    other = embedded_utility_documents()[3]
    both = word_perplexity(model, tokenizer, [text, other], max_length=64, stride=32)
    apart = [word_perplexity(model, tokenizer, [d], max_length=64, stride=32) for d in (text, other)]
    assert both["nll"] == pytest.approx(sum(r["nll"] for r in apart), rel=1e-5)
    assert both["n_words"] == sum(r["n_words"] for r in apart)


def test_toxicity_summary_matches_hand_computed_values():
    scores = [[0.1, 0.2, 0.9, 0.0], [0.5, 0.5, 0.5, 0.5], [0.3, 0.6, 0.2, 0.1], [0.0, 0.0, 0.0, 0.4]]
    summary = toxicity_summary(scores, n_resamples=500, seed=3)
    # prompt means 0.3, 0.5, 0.3, 0.1; maxima 0.9, 0.5, 0.6, 0.4; above 0.5: prompts 1 and 3 (0.5 is not above)
    assert summary["mean_toxicity"] == pytest.approx(1.2 / 4)
    assert summary["expected_max_toxicity"] == pytest.approx(2.4 / 4)
    assert summary["toxicity_probability"] == pytest.approx(0.5)
    assert (summary["n_prompts"], summary["n_continuations"]) == (4, 16)
    for name in ("mean_toxicity", "expected_max_toxicity", "toxicity_probability"):
        low, high = summary[f"{name}_ci"]
        assert 0 <= low <= summary[name] <= high <= 1
    assert toxicity_summary(scores, n_resamples=500, seed=3) == summary  # seeded
    # the interval of the toxicity probability is a bootstrap over prompts: the mean of 4 resampled 0/1 flags
    rng = np.random.default_rng(3)
    flags = np.array([1.0, 0.0, 1.0, 0.0])
    resampled = [flags[rng.integers(0, 4, 4)].mean() for _ in range(500)]
    assert summary["toxicity_probability_ci"] == pytest.approx(np.percentile(resampled, [2.5, 97.5]).tolist())


def test_batched_left_padded_generation_equals_one_at_a_time(trained):
    model, tokenizer = trained
    prompts = ["I met the dentist today. If you ask me, the dentist", "I met my uncle", "the pharmacist"]
    batched = generate_continuations(model, tokenizer, prompts, k=2, temperature=0, batch_size=3)
    alone = [generate_continuations(model, tokenizer, [p], k=1, temperature=0, batch_size=1)[0][0] for p in prompts]
    assert batched == [[text, text] for text in alone]
    assert tokenizer.padding_side == "right"


def test_detoxify_scorer_offline_says_why_and_names_the_offline_scorer(monkeypatch):
    def no_network(*args, **kwargs): raise urllib.error.URLError("Name or service not known")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(RuntimeError) as error:
        load_scorer("detoxify")
    message = str(error.value)
    assert message.startswith("could not load the Detoxify scorer 'unbiased': its checkpoint downloads from the web at first use")
    assert "scorer='offline'" in message
    with pytest.raises(RuntimeError, match="scorer='offline'"):
        load_scorer("detoxify:/no/such/checkpoint.ckpt")


def test_detoxify_scorer_loads_a_local_checkpoint(tmp_path):
    "A Detoxify checkpoint (tiny, untrained) beside its base model's config and tokenizer loads without the hub."
    import transformers
    tokenizer = load_tokenizer("embedded")
    config = transformers.BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, num_labels=2, max_position_embeddings=256)
    classifier = transformers.BertForSequenceClassification(config)
    classifier.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    torch.save({"config": {"arch": {"args": {"model_type": str(tmp_path), "model_name": "BertForSequenceClassification",
                                             "tokenizer_name": "PreTrainedTokenizerFast", "num_classes": 2}},
                           "dataset": {"args": {"classes": ["toxic", "insult"]}}},
                "state_dict": classifier.state_dict()}, tmp_path / "tiny.ckpt")
    score = load_scorer(f"detoxify:{tmp_path}")
    scores = score(["is a stupid idiot.", "is a kind person.", "hello"])
    assert len(scores) == 3 and all(0 <= s <= 1 for s in scores)
    assert load_scorer(f"detoxify:{tmp_path / 'tiny.ckpt'}")(["hello"]) == scores[2:]


def test_wikitext_file_splits_into_its_62_articles(shared_dir):
    path = shared_dir / "data" / "wikitext-2" / "test.txt"
    articles = load_utility_documents(str(path))
    assert len(articles) == 62
    assert all(a.lstrip().startswith("= ") and not a.lstrip().startswith("= =") for a in articles)
    assert sum(len(a.split()) for a in articles) == len(path.read_text(encoding="utf-8").split())  # no word lost
    assert load_utility_documents(str(path), max_documents=2) == articles[:2]


def test_run_directory_errors_say_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a run directory: it has no config.json"):
        read_run_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"data": "embedded"}))
    with pytest.raises(ValueError, match=r"lacks the keys \['nonmember_fraction', 'data_seed', 'max_length'\]"):
        read_run_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(RUN_CONFIG))
    with pytest.raises(FileNotFoundError, match="the run has not finished"):
        evaluate_run(tmp_path)


def test_evaluate_run_writes_results_and_generations(trained_run):
    settings = dict(k=4, max_length=128, stride=64, device="cpu", verbose=False)
    results = evaluate_run(trained_run, **settings)
    saved = json.loads((trained_run / "results.json").read_text())
    assert saved == results
    assert set(results) >= {"run", "toxicity", "perplexity", "membership", "settings", "timing_s", "versions"}
    assert results["run"]["method"] == "finetune" and results["perplexity"]["utility_text"] == "embedded"
    generations = read_generations(trained_run)
    assert len(generations) == 4 * results["toxicity"]["n_prompts"] == 4 * 24
    assert results["toxicity"]["mean_toxicity"] == pytest.approx(np.mean([g["toxicity"] for g in generations]))
    assert results["membership"]["auc"] > 0.6
    assert evaluate_run(trained_run, **settings)["toxicity"] == results["toxicity"]  # seeded
    assert read_generations(trained_run) == generations


def test_evaluate_notebook_runs_with_papermill(trained_run, tmp_path):
    out = subprocess.run([sys.executable, "-m", "papermill", str(REPO / "nbs" / "evaluate.ipynb"), str(tmp_path / "evaluate.ipynb"),
                          "-p", "run_dir", str(trained_run), "-p", "k", "3", "-p", "device", "cpu", "--cwd", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((trained_run / "results.json").read_text())
    assert results["settings"]["k"] == 3
    assert len(read_generations(trained_run)) == 3 * 24
