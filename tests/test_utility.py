"""Utility through lm-eval: toxigs' word perplexity equals lm-eval's loglikelihood_rolling on the same model and text
(and counts WikiText words as lm-eval's wikitext task does), a local multiple-choice task scored by utility_benchmarks
has the accuracy computed here by hand, evaluate_run stores the benchmarks in results.json, and the errors are clear."""
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

lm_eval = pytest.importorskip("lm_eval", reason="utility benchmarks need lm-eval: pip install 'toxigs[utility]'")
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.task import ConfigurableTask  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from toxigs.data import IGNORE_INDEX, embedded_utility_documents  # noqa: E402
from toxigs.evaluate import (count_words, evaluate_run, read_results, rolling_windows, split_wikitext_articles,  # noqa: E402
                             word_perplexity)
from toxigs.models import load_model, load_tokenizer  # noqa: E402
from toxigs.train import TrainConfig, run  # noqa: E402
from toxigs.utility import MissingLmEvalError, UtilityDatasetError, check_utility_tasks, utility_benchmarks  # noqa: E402

WINDOW = 128
QUESTIONS = [  # (question, choices, gold): twelve, with two to four choices
    ("Local volunteers keep the school", ["clean", "river", "music"], 0),
    ("The harbour is close to the", ["river", "bread"], 0),
    ("Children often play near the", ["bridge", "night", "stone", "spring"], 0),
    ("There is a market every", ["spring", "school"], 0),
    ("The old bridge crosses the", ["river", "music", "food"], 0),
    ("People gather at the market with music and", ["food", "stone"], 0),
    ("The station is next to the", ["harbour", "clean", "often"], 1),
    ("In Alder Creek the harbour is", ["close", "music"], 1),
    ("Volunteers keep the station", ["clean", "bridge", "food", "river"], 2),
    ("The school is near the old", ["bridge", "spring"], 1),
    ("Every spring there is music and", ["food", "river", "school"], 2),
    ("The river runs under the", ["bridge", "market"], 1),
]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("embedded")


@pytest.fixture(scope="module")
def gpt2(tokenizer):
    "A small random GPT-2 over the embedded tokenizer, seeded, with a context of WINDOW tokens."
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=WINDOW, n_embd=64, n_layer=2, n_head=2,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    return GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def choice_task(tmp_path_factory) -> Path:
    """A folder of local tasks: `toy_mc`, multiple choice, a YAML over a JSONL file; `toy_group` of it; `hub_task`, over
    a hub dataset."""
    folder = tmp_path_factory.mktemp("tasks")
    data = folder / "toy_mc.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in QUESTIONS))
    (folder / "toy_mc.yaml").write_text(
        "task: toy_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {data}\ntest_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{answer}}"\n'
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    (folder / "toy_group.yaml").write_text("group: toy_group\ntask:\n  - toy_mc\naggregate_metric_list:\n  - metric: acc\n")
    (folder / "hub_task.yaml").write_text(  # a task whose dataset is on the hub (and does not exist)
        "task: hub_task\ndataset_path: toxigs-tests/no-such-dataset\ntest_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{q}}"\ndoc_to_choice: "{{c}}"\ndoc_to_target: 0\n')
    return folder


def long_document() -> str:
    "The embedded articles as one document: about 1,200 tokens, ten windows of 128."
    return "\n\n".join(embedded_utility_documents())


def test_rolling_windows_are_lm_evals_windows(tokenizer):
    "Every window feeds and predicts the tokens that lm-eval's get_rolling_token_windows + make_disjoint_window give."
    tokens = tokenizer(long_document(), add_special_tokens=False)["input_ids"]
    prefix = tokenizer.eos_token_id
    theirs = [make_disjoint_window(w) for w in get_rolling_token_windows(tokens, prefix, WINDOW, 1)]
    ours = rolling_windows([prefix] + tokens, WINDOW, WINDOW)
    assert len(ours) == len(theirs) >= 9
    for window, (context, continuation) in zip(ours, theirs):
        fed = (context + continuation)[-(WINDOW + 1):][:-1]  # what lm-eval's HFLM feeds the model
        assert window["input_ids"][:-1] == fed
        assert [t for t in window["labels"] if t != IGNORE_INDEX] == continuation


def test_word_perplexity_equals_lm_evals_loglikelihood_rolling(gpt2, tokenizer):
    "The same NLL, words and word perplexity as lm-eval's HFLM.loglikelihood_rolling on the same model and documents."
    documents = [long_document(), embedded_utility_documents()[2]]
    lm = HFLM(pretrained=gpt2, tokenizer=tokenizer, max_length=WINDOW, batch_size=4)
    requests = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(d,), idx=i) for i, d in enumerate(documents)]
    theirs = -sum(lm.loglikelihood_rolling(requests, disable_tqdm=True))
    their_words = sum(ConfigurableTask.count_words(d) for d in documents)
    ours = word_perplexity(gpt2, tokenizer, documents, max_length=WINDOW, stride=WINDOW, batch_size=4)
    print(f"\nNLL toxigs {ours['nll']:.6f}, lm-eval {theirs:.6f}: relative difference {ours['nll'] / theirs - 1:.2e}; "
          f"word perplexity {ours['word_perplexity']:.6f} vs {math.exp(theirs / their_words):.6f}")
    assert ours["nll"] == pytest.approx(theirs, rel=1e-6)
    assert ours["n_words"] == their_words
    assert ours["word_perplexity"] == pytest.approx(math.exp(theirs / their_words), rel=1e-6)
    assert (ours["max_length"], ours["stride"]) == (WINDOW, WINDOW)


def wikitext_pages(text: str) -> list[str]:
    """The pages of EleutherAI/wikitext_document_level, lm-eval's wikitext dataset, as its card describes them: the raw
    file split into lines at each newline, a new page at each level-1 heading (` = Title = `), lines joined by newlines."""
    pages, lines = [], []
    for line in text.split("\n"):
        stripped = line.strip()
        if stripped.startswith("= ") and stripped.endswith(" =") and not stripped.startswith("= ="):
            if "\n".join(lines).strip():
                pages.append("\n".join(lines))
            lines = []
        lines.append(line)
    pages.append("\n".join(lines))
    return [p for p in pages if p.strip()]


RAW = " \n = First = \n \n Some words , here . \n \n = = Part = = \n \n More @-@ words . \n \n = Second = \n \n Other text . \n \n"


@pytest.mark.parametrize("source", ["constructed", "wikitext-2 test"])
def test_wikitext_words_are_counted_as_lm_evals_wikitext_task_counts_them(source, request):
    "Each article's word count is the one lm-eval's wikitext task (its process_results, on the page) gives."
    from lm_eval.tasks.wikitext.preprocess_wikitext import process_results
    text = RAW if source == "constructed" else (request.getfixturevalue("shared_dir") / "data/wikitext-2/test.txt").read_text()
    articles, pages = split_wikitext_articles(text), wikitext_pages(text)
    assert articles == [p.strip("\n") for p in pages]  # the same documents (up to a newline at the very end)
    theirs = [process_results({"page": p}, [0.0])["word_perplexity"][1] for p in pages]
    assert [count_words(a) for a in articles] == theirs
    assert theirs == [len(a.split()) + 2 for a in articles]  # the pieces before the first and after the last space


def choice_logprob(model, tokenizer, context: str, continuation: str) -> float:
    """log p(continuation | context) by hand, from one forward pass: the continuation's tokens are those that encoding
    context + continuation adds after the context's (as lm-eval splits them)."""
    context_ids, ids = tokenizer(context)["input_ids"], tokenizer(context + continuation)["input_ids"]
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    return sum(logprobs[t - 1, ids[t]].item() for t in range(len(context_ids), len(ids)))


def test_local_multiple_choice_accuracy_equals_an_independent_computation(gpt2, tokenizer, choice_task):
    scores = [[choice_logprob(gpt2, tokenizer, q, " " + c) for c in choices] for q, choices, _ in QUESTIONS]
    correct = np.array([int(np.argmax(s)) == a for s, (_, _, a) in zip(scores, QUESTIONS)], float)
    normed = np.array([int(np.argmax(np.array(s) / [len(c) for c in choices])) == a
                       for s, (_, choices, a) in zip(scores, QUESTIONS)], float)
    gpt2.train()
    utility = utility_benchmarks(gpt2, tokenizer, ["toy_mc"], batch_size=4, include_path=str(choice_task))
    assert gpt2.training  # left in the mode it came in
    gpt2.eval()
    metrics = utility["metrics"]["toy_mc"]
    print(f"\ntoy_mc: acc {metrics['acc']:.4f} (by hand {correct.mean():.4f}), acc_norm {metrics['acc_norm']:.4f} "
          f"(by hand {normed.mean():.4f})")
    assert 0 < correct.mean() < 1
    assert metrics["acc"] == pytest.approx(correct.mean(), abs=1e-12)
    assert metrics["acc_stderr"] == pytest.approx(correct.std(ddof=1) / math.sqrt(len(correct)), rel=1e-9)
    assert metrics["acc_norm"] == pytest.approx(normed.mean(), abs=1e-12)
    assert utility["n_samples"] == {"toy_mc": {"original": 12, "effective": 12}} and utility["n_shot"] == {"toy_mc": 0}
    assert utility["lm_eval_version"] == lm_eval.__version__ and utility["tasks"] == ["toy_mc"]
    assert json.loads(json.dumps(utility)) == utility


def test_a_group_reports_its_tasks_and_its_aggregate(gpt2, tokenizer, choice_task):
    utility = utility_benchmarks(gpt2, tokenizer, ["toy_group"], batch_size=4, include_path=str(choice_task))
    assert set(utility["metrics"]) == {"toy_group", "toy_mc"} and utility["tasks"] == ["toy_group"]
    assert utility["metrics"]["toy_group"]["acc"] == utility["metrics"]["toy_mc"]["acc"]  # one task: its mean


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    "The embedded demo's base, fine-tuned for a few steps (seconds)."
    root = tmp_path_factory.mktemp("runs")
    return run(TrainConfig(run_dir=str(root), method="finetune", steps=5), progress=False)


def test_evaluate_run_stores_the_benchmarks_in_results_json(trained_run, choice_task):
    results = evaluate_run(trained_run, k=1, n_prompts=2, max_documents=1, n_membership=4, max_length=64, device="cpu",
                           verbose=False, utility_tasks=["toy_mc"], utility_include_path=str(choice_task), utility_limit=6,
                           utility_batch_size=4)
    assert read_results(trained_run) == results
    model, tokenizer = load_model(str(trained_run / "checkpoints" / "final")), load_tokenizer(str(trained_run / "checkpoints" / "final"))
    direct = utility_benchmarks(model, tokenizer, ["toy_mc"], batch_size=4, limit=6, include_path=str(choice_task))
    assert results["utility"] == direct["metrics"] and set(results["utility"]["toy_mc"]) >= {"acc", "acc_stderr"}
    ran = results["settings"]["utility"]
    assert ran["tasks"] == ["toy_mc"] and ran["limit"] == 6 and ran["n_samples"]["toy_mc"]["effective"] == 6
    assert "metrics" not in ran and results["timing_s"]["utility"] >= 0
    without = evaluate_run(trained_run, k=1, n_prompts=2, max_documents=1, n_membership=4, max_length=64, device="cpu",
                           verbose=False)
    assert "utility" not in without and "utility" not in without["settings"]


def test_an_unknown_task_is_refused_with_close_matches(choice_task):
    with pytest.raises(ValueError, match=r"unknown lm-eval task 'arc_esay'; close matches: arc_easy.*lm-eval ls tasks"):
        check_utility_tasks(["arc_esay", "toy_mc"], str(choice_task))
    with pytest.raises(ValueError, match="unknown lm-eval task 'toy_mc'"):  # a local task, without its folder
        evaluate_run("no/such/run", utility_tasks=["toy_mc"])


def test_a_hub_dataset_offline_is_a_clear_error(gpt2, tokenizer, choice_task):
    with pytest.raises(UtilityDatasetError, match="could not load the dataset of lm-eval task 'hub_task'.*include_path"):
        utility_benchmarks(gpt2, tokenizer, ["toy_mc", "hub_task"], include_path=str(choice_task))
    if os.environ.get("HF_DATASETS_OFFLINE") == "1":  # a real task, whose dataset is on the hub
        with pytest.raises(UtilityDatasetError, match="'arc_easy'.*Hugging Face hub \\(offline mode is on\\)"):
            utility_benchmarks(gpt2, tokenizer, ["arc_easy"], limit=2)


def test_missing_lm_eval_says_how_to_install_it(gpt2, tokenizer, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if it were not installed
    with pytest.raises(MissingLmEvalError, match=r'pip install "toxigs\[utility\]"'):
        utility_benchmarks(gpt2, tokenizer, ["arc_easy"])
    with pytest.raises(MissingLmEvalError, match="lm-eval"):  # evaluate_run refuses before loading anything
        evaluate_run("no/such/run", utility_tasks=["arc_easy"])
