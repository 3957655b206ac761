"""The ToxiGen prompt files in ../shared load into forget/retain records with a clean membership split."""
from toxigs.data import load_records, split_records, toxigen_prompt_records


def test_toxigen_prompt_files_give_forget_and_retain_records(shared_dir, capsys):
    records = load_records(str(shared_dir / "data/toxigen/prompts"))
    splits = split_records(records, nonmember_fraction=0.25, seed=0, relearn_fraction=0.1)  # training's
    with capsys.disabled():
        print(f"\nToxiGen prompt files: {len(records)} records -> {splits}")
    assert len(records) == 31 * 1000  # 16 hate + 15 neutral files, 1,000 lines each
    assert {r["label"] for r in records} == {0, 1}
    assert sum(r["label"] for r in records) == 16 * 1000
    counts = splits.counts()
    assert counts["forget"] + counts["relearn"] + counts["nonmember"] == 16 * 1000
    assert counts["retain"] + counts["nonmember_retain"] == 15 * 1000
    assert min(counts.values()) > 0
    # members and non-members share no generation text, on either side
    generations = {k: {r["generation"] for r in v} for k, v in vars(splits).items()}
    assert not generations["forget"] & generations["nonmember"]
    assert not generations["relearn"] & (generations["forget"] | generations["nonmember"])
    assert not generations["retain"] & generations["nonmember_retain"]
    # about a quarter of the unique toxic generations is held out
    toxic = [generations[k] for k in ("forget", "relearn", "nonmember")]
    share = len(generations["nonmember"]) / sum(map(len, toxic))
    assert 0.2 < share < 0.3
    # and a tenth of the members' unique toxic generations is kept out of unlearning
    share = len(generations["relearn"]) / (len(generations["forget"]) + len(generations["relearn"]))
    assert 0.08 < share < 0.12
    # the member / non-member split does not depend on relearn_fraction
    assert split_records(records, 0.25, 0).nonmember == splits.nonmember


def test_split_is_seeded_and_seed_matters(shared_dir):
    records = toxigen_prompt_records(shared_dir / "data/toxigen/prompts", groups=["women", "asian"])
    a, b, c = (split_records(records, seed=s) for s in (0, 0, 1))
    assert a == b
    assert {r["generation"] for r in a.nonmember} != {r["generation"] for r in c.nonmember}
