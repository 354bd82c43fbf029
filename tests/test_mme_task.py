"""The MME-format evaluation set through lmms-eval's real task machinery."""

import pytest

from llmc.eval.mme import load_dataset, normalize_answer, score_answers
from llmc.eval.vqa import evaluate_mme

pytestmark = pytest.mark.slow


def _formula(rows, predict):
    """MME's formula written out independently: per category mean over images of acc + acc_plus."""
    by_cat = {}
    for r in rows:
        ok = predict(r) == r["answer"]
        by_cat.setdefault(r["category"], {}).setdefault(r["question_id"], []).append(ok)
    return {c: sum(50 * sum(v) + 100 * all(v) for v in imgs.values()) / len(imgs) for c, imgs in by_cat.items()}


def test_always_yes_scores_exactly_the_formula(zoo):
    data = zoo.eval_set / "data"
    rows = [dict(question_id=r["question_id"], answer=r["answer"], category=r["category"])
            for r in load_dataset(data).remove_columns("image")]
    res = evaluate_mme(lambda reqs: ["Yes"] * len(reqs), data, batch_size=128)
    expected = _formula(rows, lambda r: "Yes")
    assert res.scores.categories == pytest.approx(expected)
    assert res.scores.categories == pytest.approx({c: 50.0 for c in ("existence", "count", "color", "position")})
    assert res.scores.total == pytest.approx(200.0)
    assert res.lmms_total == pytest.approx(res.scores.total)
    assert len(res.predictions) == 2 * 512


def test_partly_right_model_matches_formula_and_lmms_aggregate(zoo):
    """Right on about a third of the images, always right on position: acc and acc_plus both move."""
    import hashlib

    data = zoo.eval_set / "data"
    ds = load_dataset(data).select(range(256))

    def digest(img):
        return hashlib.sha256(img.convert("RGB").tobytes()).hexdigest()

    truth = {(r["question"], digest(r["image"])): r for r in ds}

    def decide(row):
        good = int(hashlib.sha256(row["question_id"].encode()).hexdigest(), 16) % 3 == 0 or \
            row["category"] == "position"
        return row["answer"] if good else ("No" if row["answer"] == "Yes" else "Yes")

    def answer(reqs):
        return [decide(truth[(r.context, digest(r.images[0]))]) for r in reqs]

    res = evaluate_mme(answer, data, batch_size=64, limit=128)
    expected = _formula(list(ds), decide)
    assert res.scores.categories == pytest.approx(expected)
    assert res.scores.categories["position"] == pytest.approx(200.0)
    assert 0 < res.scores.categories["count"] < 200
    assert res.lmms_total == pytest.approx(res.scores.total)


def test_score_answers_rejects_broken_pairs():
    with pytest.raises(ValueError, match="exactly two questions"):
        score_answers([("a", "count", True)])


@pytest.mark.parametrize("text,label", [("Yes", "yes"), ("no.", "no"), ("Yes, it is", "yes"), ("n", "no"), ("maybe", "other")])
def test_normalize_answer_matches_lmms_eval(text, label):
    from lmms_eval.tasks.mme.utils import parse_pred_ans

    assert normalize_answer(text) == label == parse_pred_ans(text)
