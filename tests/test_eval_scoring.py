"""Bench scoring: both protocols' answer rules worked out by hand, and our ROUGE-L against the `rouge` package."""

from __future__ import annotations

import json
import random

import pytest

from llava_interleave.cli import main
from llava_interleave.eval.categories import place
from llava_interleave.eval.metrics import harness_choice, harness_score, normalize, paper_choice, paper_score, rouge_l
from llava_interleave.eval.scoring import Prediction, PredictionsError, read_predictions, score

EPS = 1e-8


@pytest.mark.parametrize("text, expected", [
    ("  The Cat.\n", "the cat"),              # newline -> space, strip, final period dropped, lowercase
    ("3.5, 4", "3.5 4"),                      # ', ' touches a space: deleted; '.' before a digit stays
    ("1,000 dogs!", "1000 dogs"),             # a digit,digit comma anywhere: every mark is deleted
    ("yes/no", "yes no"),                     # a mark touching no space becomes a space
    ('"(A)"', "a"),                           # quotes and parentheses go
    ("'quoted'", "quoted"),                   # outer single quotes stripped
    ("(A) cat", "a cat"),
    ("a\tb\nc", "a b c"),
    ("Ça VA?", "ça va"),                      # unicode letters kept and lowercased
    ("." * 40, "." * 8),                      # the original removes at most 32 periods (re.UNICODE as count)
    ("", ""),
])
def test_paper_normalisation(text, expected):
    assert normalize(text) == expected


@pytest.mark.parametrize("prediction, answer, expected", [
    ("A", "A", 1.0), ("A.", "A", 1.0), ("(A)", "A", 1.0),
    ("(A) cat", "A", 0.0),                    # no ':' -> the whole normalised text "a cat" must equal "a"
    ("Answer: B", "B", 1.0), ("b: a", "A", 1.0),   # the last one-letter piece wins
    ("A:", "A", 1.0), ("i: j", "A", 0.0),     # only a..h count
    ("The answer is A", "A", 0.0), ("", "A", 0.0), ("Image 2", "image 2", 1.0),
])
def test_paper_multi_choice(prediction, answer, expected):
    assert paper_score(prediction, answer, multi_choice=True) == expected


@pytest.mark.parametrize("prediction, answer, expected", [
    ("A. cat", "A", 1.0),                     # "^([A-E])\." with text after it
    ("(A) cat", "A", 1.0),                    # first standalone letter after normalisation
    ("a cat", "B", 0.0),                      # ... which can be the article "a"
    ("The answer is B", "B", 1.0), ("Answer: B", "B", 1.0),
    ("F", "F", 1.0), ("", "A", 0.0), ("G: dog", "A", 0.0),
])
def test_harness_multi_choice(prediction, answer, expected):
    assert harness_score(prediction, answer, multi_choice=True) == expected


def test_letter_readers():
    assert paper_choice("b: c: x") == "c" and paper_choice("no colon") == "no colon"
    assert harness_choice("E. the end") == "E" and harness_choice("nothing here") == "nothing here"


def test_paper_open_ended():
    # normalised: "the cat sat" vs "the cat sat on the mat": LCS 3 words, 5 distinct answer words
    assert paper_score("The cat sat.", "The cat sat on the mat!", False) == pytest.approx(2 * 0.6 / (1.6 + EPS), abs=1e-12)
    assert paper_score("", "a cat", False) == 0.0
    assert paper_score("a cat", "", False) is None and paper_score("a cat", "...", False) is None
    long = "x " * 300 + "cat"                 # "cat" lies beyond the first 512 characters
    assert paper_score(long, "cat", False) == 0.0 and paper_score("cat " + long, "cat", False) > 0


def test_harness_open_ended_has_no_normalisation():
    assert harness_score("The cat", "the cat", False) == pytest.approx(0.5 / (1 + EPS), abs=1e-12)
    assert paper_score("The cat", "the cat", False) == pytest.approx(2 / (2 + EPS), abs=1e-12)
    assert harness_score("", "cat", False) == 0.0 and harness_score("cat", "...", False) is None


def test_rouge_l_pinned_values():
    assert rouge_l("the cat sat on the mat", "the cat sat") == pytest.approx(1.2 / (1.6 + EPS), abs=1e-15)
    assert rouge_l("a a a", "a") == pytest.approx(2 / (2 + EPS), abs=1e-15)      # words are counted as sets
    assert rouge_l("b a", "a b. b") == pytest.approx(0.5 / (1 + EPS), abs=1e-15)  # the package's LCS pick: {b}
    assert rouge_l("...", "a") == 0.0 and rouge_l("a", "") == 0.0
    assert rouge_l("naïve café", "café") == pytest.approx(2 * 0.5 / (1.5 + EPS), abs=1e-15)


TRICKY = ["a.b", "a  b . c", "the the cat", "naïve café. Ünïcödé", "1.5 2.5", "x\n\ny\tz", " . a", "a. .",
          "A man, a plan. A canal: Panama", "b a", "a b. b", "  ", "é", "cat cat dog. dog cat"]


def test_rouge_l_equals_the_rouge_package():
    rouge = pytest.importorskip("rouge")
    scorer = rouge.Rouge(metrics=["rouge-l"])
    rng = random.Random(0)
    vocab = ["a", "b", "the", "cat", "Cat", ".", " ", "  ", "\n", "é", "x.y", "1.5", ",", "a.", "\t", "日本"]
    pairs = [(h, r) for h in TRICKY for r in TRICKY]
    for _ in range(3000):
        pairs.append(tuple("".join(rng.choice(vocab) + rng.choice(["", " "]) for _ in range(rng.randint(1, 25)))
                           for _ in range(2)))
    compared = 0
    for hyp, ref in pairs:
        try:
            want = scorer.get_scores(hyp, ref)[0]["rouge-l"]["f"]
        except ValueError:  # a side without any sentence: the package raises, we give 0
            assert rouge_l(hyp, ref) == 0.0
            continue
        assert rouge_l(hyp, ref) == want, (hyp, ref)
        compared += 1
    assert compared > 2500


def test_categories():
    assert place("Birds-to-Words").category == "Spot-the-Diff" and place("ocr_vqa").category == "Text-Rich-VQA"
    assert place("NuScenes").split == "multi_view" and place("MathVerse").category == "MathVerse-mv"
    assert place("SynthMotion").category == "Synth video" and place("SynthCount").category == "Synth multi-image"
    assert place("MyNewSet").category == "MyNewSet" and place("MyNewSet").split is None


def _p(sample_id, dataset, prediction, answer, qtype="multi-choice", split="in_domain", turn=0):
    return Prediction(sample_id=sample_id, dataset=dataset, category=place(dataset).category, split=split,
                      question_type=qtype, prediction=prediction, answer=answer, turn=turn)


def test_aggregation_differs_by_protocol():
    predictions = [
        _p("1", "Spot-the-Diff", "A", "A"), _p("2", "Spot-the-Diff", "B", "A"), _p("3", "Birds-to-Words", "C", "C"),
        _p("4", "QBench", "D", "A"), _p("5", "Mantis", "A", "A", split="out_domain"),
        _p("6", "Spot-the-Diff", "anything", "", qtype="open-ended"),   # empty answer: skipped by both
    ]
    paper = score(predictions, "paper")
    assert paper.datasets == {"Birds-to-Words": 100.0, "Mantis": 100.0, "QBench": 0.0, "Spot-the-Diff": 50.0}
    assert paper.categories["Spot-the-Diff"] == 75.0           # mean of its datasets (50, 100)
    assert paper.splits == {"in_domain": 37.5, "out_domain": 100.0} and paper.overall == 68.75
    harness = score(predictions, "harness")
    assert harness.categories["Spot-the-Diff"] == pytest.approx(2 / 3)  # mean of its samples (1, 0, 1)
    assert harness.splits["in_domain"] == pytest.approx(1 / 3) and harness.splits["out_domain"] == 1.0
    assert paper.samples["Spot-the-Diff"] == 2


def test_reads_the_original_output_format(tmp_path):
    path = tmp_path / "result.jsonl"
    lines = [{"dataset": "BLINK", "sample_id": 7, "pred_response": "(A)", "gt_response": "(A)", "question_type": "multi-choice"},
             {"dataset": "ScanQA", "sample_id": 8, "pred_response": "a chair", "gt_response": "the chair", "question_type": "open-ended"}]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"dataset": "BLI')  # a killed writer's last line
    predictions = read_predictions(path)
    assert [(p.sample_id, p.split, p.category) for p in predictions] == [("7", "out_domain", "BLINK"), ("8", "multi_view", "ScanQA")]
    result = score(predictions, "paper")
    assert result.datasets["BLINK"] == 100.0 and result.datasets["ScanQA"] == pytest.approx(50 / (1 + EPS))
    (tmp_path / "bad.jsonl").write_text('{"dataset": "X"}\n{}\n')
    with pytest.raises(PredictionsError, match="missing sample_id"):
        read_predictions(tmp_path / "bad.jsonl")


def test_score_command(tmp_path, capsys):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(_p("1", "NLVR2_Mantis", "B: yes", "B").to_json()) + "\n")
    assert main(["score", str(path), "--protocol", "paper", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["protocol"] == "paper" and out["datasets"] == {"NLVR2_Mantis": 100.0}
    assert out["categories"] == {"NLVR2": 100.0} and out["splits"] == {"in_domain": 100.0}
    assert main(["score", str(tmp_path / "missing.jsonl")]) == 1
    assert "error: predictions file not found" in capsys.readouterr().err
