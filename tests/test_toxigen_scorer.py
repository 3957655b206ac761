"""The ToxiGen scorer (`toxigen-lr:<folder>`) on the prompt files in ../shared: it is fitted on the groups that are
not held out, scores the held-out groups' statements well above chance, tells which records it may score, and
evaluate_run records its training groups beside the results."""
import json

import pytest
from sklearn.metrics import roc_auc_score

from toxigs.data import toxigen_prompt_records
from toxigs.evaluate import TOXIGEN_HELD_OUT, check_unseen_groups, evaluate_run, fit_toxigen_scorer, load_scorer
from toxigs.models import init_model_folder, load_model, load_tokenizer
from toxigs.runs import write_checksums


@pytest.fixture(scope="module")
def prompts(shared_dir):
    return shared_dir / "data/toxigen/prompts"


def test_default_split_holds_out_whole_groups_and_scores_them_above_chance(prompts):
    scorer, report = fit_toxigen_scorer(prompts)
    assert report["held_out_groups"] == sorted(TOXIGEN_HELD_OUT)
    assert not set(report["train_groups"]) & set(report["held_out_groups"])
    assert len(report["train_groups"]) + len(report["held_out_groups"]) == 16
    assert report["accuracy"] > 0.7 and report["roc_auc"] > 0.8, report
    assert all(m["roc_auc"] > 0.7 for m in report["by_group"].values()), report["by_group"]


def test_records_of_held_out_groups_only_pass_and_their_generations_are_separated(prompts):
    name = f"toxigen-lr:{prompts}"
    held_out = toxigen_prompt_records(prompts, groups=TOXIGEN_HELD_OUT, max_lines_per_file=50)
    assert check_unseen_groups(held_out, name) == sorted(TOXIGEN_HELD_OUT)
    with pytest.raises(ValueError, match=r"trained on: \['asian'\]"):
        check_unseen_groups(held_out + toxigen_prompt_records(prompts, groups=["asian"], max_lines_per_file=1), name)
    # a record's generation is one statement, as a continuation would be
    scores = load_scorer(name)([" " + r["generation"] for r in held_out])
    assert roc_auc_score([r["label"] for r in held_out], scores) > 0.8


def test_evaluate_run_records_the_scorers_training_groups(prompts, tmp_path):
    final = tmp_path / "checkpoints" / "final"  # a run directory holding the untrained embedded model: enough to evaluate
    load_model("embedded").save_pretrained(final)
    load_tokenizer("embedded").save_pretrained(final)
    write_checksums(final)  # vouch for the hand-made checkpoint: evaluation loads only verified ones
    (tmp_path / "config.json").write_text(json.dumps({"method": "finetune", "model": "embedded", "data": "embedded", "data_seed": 0,
                                                      "nonmember_fraction": 0.25, "max_length": 256, "seed": 0}))
    results = evaluate_run(tmp_path, scorer=f"toxigen-lr:{prompts}?held_out=women,black", k=2, n_prompts=4, max_documents=1,
                           max_length=128, stride=128, device="cpu", verbose=False)
    report = results["settings"]["scorer_report"]
    assert report["held_out_groups"] == ["black", "women"] and "asian" in report["train_groups"]
    assert json.loads((tmp_path / "results.json").read_text())["settings"]["scorer_report"] == report
    assert 0 <= results["toxicity"]["mean_toxicity"] <= 1
    assert getattr(load_scorer("offline"), "report", None) is None  # other scorers record None


def test_evaluate_run_scores_only_prompts_of_the_scorers_held_out_groups(prompts, shared_dir, tmp_path):
    # an untrained one-block GPT-2 with the GPT-2 tokenizer: ToxiGen prompts need more than the embedded model's 256 positions
    init_model_folder(tmp_path / "checkpoints" / "final", shared_dir / "assets/gpt2-tokenizer", n_layer=1, n_embd=32, n_head=2, n_positions=512)
    write_checksums(tmp_path / "checkpoints" / "final")
    (tmp_path / "config.json").write_text(json.dumps({"method": "finetune", "model": "tiny", "data": str(prompts), "data_seed": 0,
                                                      "nonmember_fraction": 0.25, "max_length": 256, "seed": 0}))
    scorer = f"toxigen-lr:{prompts}?held_out=women,black"
    settings = dict(k=2, n_prompts=6, max_documents=1, utility_text="embedded", n_membership=10, max_length=128, stride=128,
                    device="cpu", verbose=False)
    with pytest.raises(ValueError, match=r"trained on: .*evaluate with prompt_groups=\['black', 'women'\]"):
        evaluate_run(tmp_path, scorer=scorer, **settings)
    results = evaluate_run(tmp_path, scorer=scorer, prompt_groups=["women", "black"], **settings)
    assert results["settings"]["prompt_groups"] == ["women", "black"] and results["settings"]["n_prompts"] == 6
    groups = {r["prompt"]: r["group"] for r in toxigen_prompt_records(prompts)}
    generated = [json.loads(line) for line in (tmp_path / "generations.jsonl").read_text().splitlines()]
    assert {groups[g["prompt"]] for g in generated} == {"women", "black"}  # balanced over the two groups
