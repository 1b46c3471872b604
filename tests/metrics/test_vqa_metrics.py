"""VQA normalisation, accuracy and lemmatisation against values worked out by hand.

The lemmatizer tests need spaCy and spacy-lookups-data (the ``vqa`` extra) and are
skipped without them; the ImportError tests run either way.
"""
from __future__ import annotations

import logging
import sys

import pytest

from vlft.metrics import vqa
from vlft.metrics.vqa import make_lemmatizer, normalize_answer, vqa_accuracy, vqa_scores


@pytest.mark.parametrize("raw,expected", [
    ("Yes.", "yes"),                       # lower case; a period with no digit after it goes
    ("  two\t", "2"),                      # tab -> space, strip, number word -> digit
    ("Two Dogs", "2 dogs"),
    ("none", "0"),
    ("a dog", "dog"),                      # articles dropped
    ("The red bus", "red bus"),
    ("an apple", "apple"),
    ("dont", "don't"),                     # contraction table
    ("Isnt", "isn't"),                     # lower-cased before the lookup
    ("whats\nthat", "what's that"),        # newline -> space
    ("don't", "don't"),                    # "'" is not in the punctuation list
    ("t-shirt", "t shirt"),                # a mark inside a word becomes a space
    ("black - white", "black white"),      # a mark touching a space is dropped
    ("red, white", "red white"),
    ("yes!", "yes"),                       # "!" -> " ", then the split drops it
    ("(a) cat, dog", "cat dog"),           # "(" -> " ", ")" and "," dropped, article dropped
    ("N/A", "n"),                          # "/" -> " " leaves "n a", and "a" is an article
    ("1,000", "1000"),                     # digit,digit: every mark is dropped, the number stays one token
    ("2,5 and a-b", "25 and ab"),          # ... even marks elsewhere in the answer
    ("3.5", "3.5"),                        # a period followed by a digit stays
    ("3.5.", "3.5"),                       # the trailing one goes
    (".5", ".5"),                          # the official regex only looks at the next character
    ("5.", "5"),
    ("10:30", "10:30"),                    # ":" is not in the list either
    ("", ""),
])
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_normalize_answer_keeps_the_official_period_limit():
    # the official script passes re.UNICODE (32) where re.sub takes its count
    assert normalize_answer("." * 40 + "x") == "." * 8 + "x"


def test_contraction_table_is_the_official_one():
    assert len(vqa.CONTRACTIONS) == 120 and len(vqa.PUNCTUATION) == 21
    assert vqa.CONTRACTIONS["somebody'd"] == "somebodyd"  # the official table's backwards entry
    assert set(vqa.NUMBER_WORDS.values()) == {str(n) for n in range(11)}


@pytest.mark.parametrize("k,expected", [
    # 10 answers, k of them agree with the prediction. Leaving out an agreeing annotator
    # leaves k-1 agreeing, leaving out another leaves k:
    #   acc = (k * min(1, (k-1)/3) + (10-k) * min(1, k/3)) / 10
    (0, 0.0),
    (1, 0.3),   # (1*0   + 9*1/3) / 10 = 3/10
    (2, 0.6),   # (2*1/3 + 8*2/3) / 10 = (2/3 + 16/3) / 10 = 6/10
    (3, 0.9),   # (3*2/3 + 7*1)   / 10 = (2 + 7) / 10
    (4, 1.0),   # (4*1   + 6*1)   / 10
    (10, 1.0),
])
def test_accuracy_with_ten_annotators(k, expected):
    answers = ["2"] * k + ["3"] * (10 - k)
    assert vqa_accuracy("Two.", answers) == pytest.approx(expected, abs=1e-12)


def test_accuracy_normalises_both_sides():
    # the references are raw here; normalised they are "2 dogs" x3
    assert vqa_accuracy("2 dogs", ["two dogs", "Two dogs.", "the two dogs", "cat"]) == pytest.approx(
        (3 * 2 / 3 + 1 * 1) / 4  # an agreeing annotator left out leaves 2 of 3 agreeing
    )


def test_accuracy_with_few_answers():
    # 5 answers, 1 agrees: leaving it out leaves 0 (score 0); leaving out any of the
    # other 4 leaves 1 (score 1/3) => (0 + 4/3) / 5 = 4/15
    assert vqa_accuracy("dog", ["dog", "cat", "cat", "cow", "pig"]) == pytest.approx(4 / 15)
    # 2 answers both agreeing: each left out leaves 1 => 1/3
    assert vqa_accuracy("dog", ["dog", "dog"]) == pytest.approx(1 / 3)
    # a single reference is an exact match (after normalisation), not leave-one-out
    assert vqa_accuracy("The dog", ["dog"]) == 1.0
    assert vqa_accuracy("cat", ["dog"]) == 0.0


def test_accuracy_rejects_bad_answers():
    with pytest.raises(TypeError, match="list of reference answers"):
        vqa_accuracy("dog", "dog")
    with pytest.raises(ValueError, match="no reference answer"):
        vqa_accuracy("dog", [])
    with pytest.raises(TypeError, match="prediction"):
        vqa_accuracy(None, ["dog"])


GROUND_TRUTH = {
    1: ["yes"] * 10,
    2: ["2"] * 3 + ["3"] * 7,
    3: ["red"] * 10,
    4: ["dog"] * 2 + ["cat"] * 8,
}
TYPES = {1: "yes/no", 2: "number", 3: "other", 4: "other"}
PREDICTIONS = {1: "Yes", 2: "two", 3: "blue", 4: "a dog."}  # accuracies 1, 0.9, 0, 0.6


def test_scores_overall_and_per_type():
    scores = vqa_scores(PREDICTIONS, GROUND_TRUTH, TYPES)
    assert scores == {
        "agg_metrics": pytest.approx(62.5),   # (1 + 0.9 + 0 + 0.6) / 4 = 0.625
        "overall": pytest.approx(62.5),
        "number": pytest.approx(90.0),
        "other": pytest.approx(30.0),         # (0 + 0.6) / 2
        "yes/no": pytest.approx(100.0),
        "num_questions": 4,
    }
    assert list(scores) == ["agg_metrics", "overall", "number", "other", "yes/no", "num_questions"]


def test_scores_without_answer_types():
    assert vqa_scores(PREDICTIONS, GROUND_TRUTH) == {
        "agg_metrics": pytest.approx(62.5), "overall": pytest.approx(62.5), "num_questions": 4,
    }


def test_missing_predictions_count_as_wrong(caplog):
    partial = {qid: answer for qid, answer in PREDICTIONS.items() if qid != 1}
    with caplog.at_level(logging.WARNING, logger="vlft.metrics.vqa"):
        scores = vqa_scores(partial, GROUND_TRUTH, TYPES)
    assert scores["overall"] == pytest.approx(37.5)  # (0 + 0.9 + 0 + 0.6) / 4
    assert scores["yes/no"] == 0.0 and scores["num_questions"] == 4
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "1 of 4 questions have no prediction" in messages[0] and "e.g. 1" in messages[0]


def test_predictions_for_unknown_questions_are_an_error():
    with pytest.raises(ValueError, match=r"2 prediction\(s\) are for question ids not in ground_truth: 99, 'q7'"):
        vqa_scores({**PREDICTIONS, 99: "yes", "q7": "no"}, GROUND_TRUTH)
    with pytest.raises(ValueError, match="str on one side and int on the other"):
        vqa_scores({"1": "yes"}, GROUND_TRUTH)


def test_scores_reject_bad_inputs():
    with pytest.raises(ValueError, match="ground_truth is empty"):
        vqa_scores({}, {})
    with pytest.raises(ValueError, match=r"no entry in answer_types: 4"):
        vqa_scores(PREDICTIONS, GROUND_TRUTH, {1: "yes/no", 2: "number", 3: "other"})
    with pytest.raises(ValueError, match="would overwrite the result keys"):
        vqa_scores(PREDICTIONS, GROUND_TRUTH, {**TYPES, 3: "overall"})
    with pytest.raises(TypeError, match=r"ground_truth\[5\] must be a list"):
        vqa_scores({}, {**GROUND_TRUTH, 5: "yes"})
    with pytest.raises(TypeError, match=r"predictions\[1\] must be an answer string"):
        vqa_scores({1: ["yes"]}, GROUND_TRUTH)


# --- lemmatizer ---------------------------------------------------------------------


def test_missing_spacy_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "spacy", None)  # makes `import spacy` fail
    with pytest.raises(ImportError, match=r'pip install "spacy>=3.7" "spacy-lookups-data>=1.0"'):
        vqa._load_pipeline()


def test_missing_lookup_tables_name_the_pip_command(monkeypatch):
    spacy = pytest.importorskip("spacy")

    def no_model(name, *args, **kwargs):
        raise OSError(f"[E050] Can't find model '{name}'")

    monkeypatch.setattr(spacy, "load", no_model)
    monkeypatch.setitem(sys.modules, "spacy_lookups_data", None)
    with pytest.raises(ImportError, match=r"spacy-lookups-data\).*pip install \"spacy>=3.7\" \"spacy-lookups-data>=1.0\""):
        vqa._load_pipeline()


@pytest.fixture(scope="module")
def lookup_lemmatizer():
    """The blank pipeline with lookup tables, even where en_core_web_sm is installed."""
    spacy = pytest.importorskip("spacy")
    pytest.importorskip("spacy_lookups_data")

    def no_model(name, *args, **kwargs):
        raise OSError(f"[E050] Can't find model '{name}'")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(spacy, "load", no_model)
        vqa._pipeline.cache_clear()
        lemmatize = make_lemmatizer()
    yield lemmatize
    vqa._pipeline.cache_clear()  # later callers load the real choice again


@pytest.mark.parametrize("answer,expected", [
    ("dogs", "dog"),
    ("running", "run"),
    ("children", "child"),
    ("mice", "mouse"),
    ("two dogs are running", "two dog be run"),  # no parts of speech: every token is looked up
    ("better", "well"),                          # ... adjectives too
    ("don't", "do not"),                         # tokens joined by spaces, as LAVIS does
    ("Dogs", "Dogs"),                            # the tables are keyed on lower case
    ("frisbees", "frisbees"),                    # not in the tables: unchanged
    ("", ""),
])
def test_lookup_lemmatizer(lookup_lemmatizer, answer, expected):
    assert lookup_lemmatizer(answer) == expected


def test_pipeline_is_loaded_once(lookup_lemmatizer):
    vqa._pipeline()
    before = vqa._pipeline.cache_info()
    make_lemmatizer()
    make_lemmatizer()
    after = vqa._pipeline.cache_info()
    assert after.misses == before.misses and after.hits == before.hits + 2 and after.currsize == 1


def test_tagging_pipeline_lemmatises_nouns_and_verbs_only(monkeypatch):
    spacy = pytest.importorskip("spacy")
    from spacy.tokens import Doc

    vocab = spacy.blank("en").vocab
    tags = {"dogs": ("NOUN", "dog"), "running": ("VERB", "run"), "better": ("ADJ", "well"), "are": ("AUX", "be")}

    class TaggingPipeline:  # stands in for en_core_web_sm
        pipe_names = ["tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer", "ner"]

        def __call__(self, text):
            words = text.split()
            return Doc(vocab, words=words, pos=[tags[w][0] for w in words], lemmas=[tags[w][1] for w in words])

    monkeypatch.setattr(spacy, "load", lambda name, *args, **kwargs: TaggingPipeline())
    nlp, has_pos = vqa._load_pipeline()
    assert isinstance(nlp, TaggingPipeline) and has_pos

    monkeypatch.setattr(vqa, "_pipeline", lambda: (nlp, has_pos))
    assert make_lemmatizer()("dogs are running better") == "dog are run better"
