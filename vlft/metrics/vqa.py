"""VQA accuracy: the official VQA v2 metric, LAVIS's A-OKVQA and GQA accuracies, and
answer lemmatisation for OK-VQA.

Normalisation and accuracy follow the VQA v2 evaluation script (GT-Vision-Lab/VQA,
``PythonEvaluationTools/vqaEvaluation/vqaEval.py``; LAVIS ships a copy): the same
punctuation list, number-word map, articles and contraction table, and the same
leave-one-annotator-out accuracy, ``min(1, matches among the other answers / 3)``
averaged over annotators.

Where we differ from that script, on purpose:

- It fully normalises the prediction but gives the reference answers only the
  punctuation step, and only when the annotators disagree. We normalise both sides
  the same way. VQA v2 references are stored normalised already, so on its
  annotation files the numbers are the same; on raw answers ours is the symmetric one.
- With a single reference answer leave-one-out has no one left to agree with (it
  would always score 0); we score an exact match (after normalisation) 1, else 0.
- Scores are not rounded (the script rounds percentages to 2 decimals).

A-OKVQA (:func:`aokvqa_scores`) and GQA (:func:`gqa_scores`) are scored as LAVIS's
``AOKVQATask`` / ``GQATask`` do, see those functions.

Quirks of the script that we keep, so that the numbers match: its period regex keeps
a period only when a digit follows ("3.5" and ".5" keep theirs, "5." loses it); it
removes at most 32 periods (``re.UNICODE`` is passed where ``sub`` takes its
``count``); and the capitalised contraction keys ("Im", "Ive") never match, because
words are lower-cased before the lookup.
"""
from __future__ import annotations

import functools
import logging
import re
from typing import Any, Callable, Dict, Hashable, List, Mapping, Optional, Sequence, Tuple

logger = logging.getLogger(__name__)

# --- the official normalisation tables (data, as in vqaEval.py) --------------------

PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})
# "somebody'd" -> "somebodyd" runs backwards in the official table; kept as it is
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
_MAX_PERIODS_REMOVED = 32  # the official script's accidental count (re.UNICODE == 32)

_RESERVED_KEYS = ("agg_metrics", "overall", "num_questions")
_INSTALL = 'pip install "spacy>=3.7" "spacy-lookups-data>=1.0"  (in a vlft checkout: pip install -e ".[vqa]")'


def _strip_punctuation(text: str) -> str:
    # A mark touching a space is dropped ("red, white" -> "red white"), one inside a
    # word becomes a space ("t-shirt" -> "t shirt"). A number with a thousands comma
    # anywhere in the answer drops every mark, so "1,000" stays one token.
    drop_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        # tested on the unmodified text, as the official script does
        drop = drop_all or mark + " " in text or " " + mark in text
        out = out.replace(mark, "" if drop else " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=_MAX_PERIODS_REMOVED)


def _map_words(text: str) -> str:
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def normalize_answer(answer: str) -> str:
    """An answer as the VQA v2 evaluation compares it.

    Newlines and tabs become spaces; punctuation is dropped or turned into a space;
    periods not followed by a digit are removed; then word by word: lower case,
    number words "none"/"zero".."ten" become digits, articles (a, an, the) are
    dropped, and contractions written without an apostrophe get it ("dont" -> "don't").
    """
    if not isinstance(answer, str):
        raise TypeError(f"normalize_answer: expected an answer string, got {type(answer).__name__}")
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    return _map_words(_strip_punctuation(text))


def _check_answers(answers: Sequence[str], where: str) -> None:
    if isinstance(answers, str) or not isinstance(answers, Sequence):
        raise TypeError(f"{where} must be a list of reference answers, got {type(answers).__name__}")
    if not answers:
        raise ValueError(f"{where} has no reference answer")
    for answer in answers:
        if not isinstance(answer, str):
            raise TypeError(f"{where} holds a {type(answer).__name__}, expected str answers")


def _accuracy(prediction: str, answers: List[str]) -> float:
    """Accuracy of an already normalised prediction against normalised references."""
    if len(answers) == 1:
        return float(prediction == answers[0])
    matches = sum(answer == prediction for answer in answers)
    # annotator i is left out: the others hold `matches` agreeing answers, less one if i agreed
    return sum(min(1.0, (matches - (answer == prediction)) / 3) for answer in answers) / len(answers)


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Official VQA accuracy (0..1) of one predicted answer against the annotators' answers.

    Both sides are normalised with :func:`normalize_answer`. For each annotator the
    prediction scores ``min(1, n / 3)``, ``n`` being how many of the *other*
    annotators gave it; the result is the mean over annotators. With 10 answers of
    which k match: k = 1 -> 0.3, 2 -> 0.6, 3 -> 0.9, 4 or more -> 1. With a single
    reference the score is 1 for a match and 0 otherwise (leave-one-out would always give 0).
    """
    _check_answers(answers, "vqa_accuracy: answers")
    if not isinstance(prediction, str):
        raise TypeError(f"vqa_accuracy: prediction must be an answer string, got {type(prediction).__name__}")
    return _accuracy(normalize_answer(prediction), [normalize_answer(a) for a in answers])


def _some(keys: List[Any], n: int = 5) -> str:
    shown = ", ".join(repr(k) for k in keys[:n])
    return shown + (f" and {len(keys) - n} more" if len(keys) > n else "")


def _check_ids(predictions: Mapping[Hashable, str], ground_truth: Mapping[Hashable, Sequence[str]],
               answer_types: Optional[Mapping[Hashable, str]]) -> None:
    if not ground_truth:
        raise ValueError("vqa_scores: ground_truth is empty, there are no questions to score")
    unknown = [qid for qid in predictions if qid not in ground_truth]
    if unknown:
        hint = ""
        if any(str(qid) == str(unknown[0]) for qid in ground_truth):
            hint = " (an id with the same text but another type is there: are ids str on one side and int on the other?)"
        raise ValueError(
            f"vqa_scores: {len(unknown)} prediction(s) are for question ids not in ground_truth: {_some(unknown)}{hint}"
        )
    for qid, prediction in predictions.items():
        if not isinstance(prediction, str):
            raise TypeError(f"vqa_scores: predictions[{qid!r}] must be an answer string, got {type(prediction).__name__}")
    if answer_types is not None:
        untyped = [qid for qid in ground_truth if qid not in answer_types]
        if untyped:
            raise ValueError(f"vqa_scores: {len(untyped)} question(s) have no entry in answer_types: {_some(untyped)}")
        clash = sorted({answer_types[qid] for qid in ground_truth} & set(_RESERVED_KEYS))
        if clash:
            raise ValueError(f"vqa_scores: answer type(s) {clash} would overwrite the result keys {list(_RESERVED_KEYS)}")


def vqa_scores(
    predictions: Mapping[Hashable, str],
    ground_truth: Mapping[Hashable, Sequence[str]],
    answer_types: Optional[Mapping[Hashable, str]] = None,
) -> Dict[str, float]:
    """VQA accuracy in percent over a set of questions, overall and per answer type.

    ``predictions`` maps question id -> predicted answer, ``ground_truth`` question id
    -> the annotators' answers, ``answer_types`` (optional) question id -> type such as
    ``"yes/no"``, ``"number"``, ``"other"``. Returns ``agg_metrics`` and ``overall``
    (the same number: mean accuracy x 100), one entry per answer type, and
    ``num_questions``. A question without a prediction scores 0 (with a warning
    saying how many); a prediction for an id not in ``ground_truth`` is a ``ValueError``.
    """
    _check_ids(predictions, ground_truth, answer_types)
    missing = [qid for qid in ground_truth if qid not in predictions]
    if missing:
        logger.warning("vqa_scores: %d of %d questions have no prediction and count as wrong, e.g. %s",
                       len(missing), len(ground_truth), _some(missing, 3))

    normalized: Dict[str, str] = {}  # references repeat a lot ("yes", "2"): normalise each text once

    def norm(text: str) -> str:
        if text not in normalized:
            normalized[text] = normalize_answer(text)
        return normalized[text]

    per_question: Dict[Hashable, float] = {}
    for qid, answers in ground_truth.items():
        _check_answers(answers, f"vqa_scores: ground_truth[{qid!r}]")
        if qid in predictions:
            per_question[qid] = _accuracy(norm(predictions[qid]), [norm(a) for a in answers])
        else:
            per_question[qid] = 0.0

    overall = 100.0 * sum(per_question.values()) / len(per_question)
    scores: Dict[str, float] = {"agg_metrics": overall, "overall": overall}
    if answer_types is not None:
        by_type: Dict[str, List[float]] = {}
        for qid, accuracy in per_question.items():
            by_type.setdefault(answer_types[qid], []).append(accuracy)
        for answer_type in sorted(by_type):
            scores[answer_type] = 100.0 * sum(by_type[answer_type]) / len(by_type[answer_type])
    scores["num_questions"] = len(per_question)
    return scores


# --- A-OKVQA and GQA (LAVIS's AOKVQATask / GQATask) ----------------------------------


def aokvqa_direct_answer_accuracy(prediction: str, direct_answers: Sequence[str]) -> float:
    """A-OKVQA direct-answer accuracy (0..1) of one prediction: ``min(1, n / 3)``, ``n``
    being how many of the annotators' direct answers equal it exactly. No normalisation
    and no leave-one-out, as LAVIS's ``AOKVQATask`` and A-OKVQA's own evaluation
    (allenai/aokvqa ``eval_predictions.py``) compute it."""
    _check_answers(direct_answers, "aokvqa_direct_answer_accuracy: direct_answers")
    return min(1.0, sum(prediction == answer for answer in direct_answers) / 3.0)


def aokvqa_scores(
    predictions: Mapping[Hashable, str],
    direct_answers: Mapping[Hashable, Sequence[str]],
    choice_predictions: Optional[Mapping[Hashable, str]] = None,
    correct_choices: Optional[Mapping[Hashable, str]] = None,
) -> Dict[str, float]:
    """A-OKVQA scores in percent: ``acc`` (direct answers, :func:`aokvqa_direct_answer_accuracy`
    averaged over the questions) and ``agg_metrics`` (the same, as LAVIS), plus, when
    ``choice_predictions`` (question id -> the chosen choice) and ``correct_choices``
    (question id -> the right choice) are given, ``mc_acc``: the percentage of questions
    whose chosen choice is the right one (LAVIS does not score the multiple-choice task;
    A-OKVQA's evaluation does, this way). A question without a prediction scores 0."""
    _check_ids(predictions, direct_answers, None)
    missing = [qid for qid in direct_answers if qid not in predictions]
    if missing:
        logger.warning("aokvqa_scores: %d of %d questions have no prediction and count as wrong, e.g. %s",
                       len(missing), len(direct_answers), _some(missing, 3))
    total = sum(aokvqa_direct_answer_accuracy(predictions[qid], answers) if qid in predictions else 0.0
                for qid, answers in direct_answers.items())
    accuracy = 100.0 * total / len(direct_answers)
    scores: Dict[str, float] = {"agg_metrics": accuracy, "acc": accuracy}
    if choice_predictions is not None and correct_choices:
        right = sum(choice_predictions.get(qid) == choice for qid, choice in correct_choices.items())
        scores["mc_acc"] = 100.0 * right / len(correct_choices)
    scores["num_questions"] = len(direct_answers)
    return scores


def normalize_gqa_answer(answer: str) -> str:
    """An answer as LAVIS's ``GQATask`` compares it: VQA v2's punctuation step, then its
    digit / article / contraction step (:func:`normalize_answer` without its first step,
    newlines and tabs to spaces and a strip, which LAVIS's GQA scoring leaves out)."""
    if not isinstance(answer, str):
        raise TypeError(f"normalize_gqa_answer: expected an answer string, got {type(answer).__name__}")
    return _map_words(_strip_punctuation(answer))


def gqa_scores(predictions: Mapping[Hashable, str],
               ground_truth: Mapping[Hashable, Any]) -> Dict[str, float]:
    """GQA accuracy in percent, as LAVIS's ``GQATask``: a prediction is right when, after
    :func:`normalize_gqa_answer` on both sides, it equals the question's answer
    (``ground_truth``: question id -> the answer, or a list holding it; with several,
    any of them). ``acc`` and ``agg_metrics`` are the same number. A question without a
    prediction scores 0."""
    truth = {qid: [answer] if isinstance(answer, str) else list(answer) for qid, answer in ground_truth.items()}
    _check_ids(predictions, truth, None)
    missing = [qid for qid in truth if qid not in predictions]
    if missing:
        logger.warning("gqa_scores: %d of %d questions have no prediction and count as wrong, e.g. %s",
                       len(missing), len(truth), _some(missing, 3))
    right = 0
    for qid, answers in truth.items():
        _check_answers(answers, f"gqa_scores: ground_truth[{qid!r}]")
        if qid in predictions:
            pred = normalize_gqa_answer(predictions[qid])
            right += any(pred == normalize_gqa_answer(a) for a in answers)
    accuracy = 100.0 * right / len(truth)
    return {"agg_metrics": accuracy, "acc": accuracy, "num_questions": len(truth)}


# --- lemmatisation (OK-VQA) ---------------------------------------------------------


def _load_pipeline() -> Tuple[Any, bool]:
    """A spaCy pipeline and whether it tags parts of speech: en_core_web_sm, else a lookup lemmatizer."""
    try:
        import spacy
    except ImportError as err:
        raise ImportError(f"VQA answer lemmatisation needs spaCy, which is not installed: {_INSTALL}") from err
    try:
        nlp = spacy.load("en_core_web_sm")
    except OSError:  # E050: the model package is not installed
        pass
    else:
        return nlp, any(name in nlp.pipe_names for name in ("tagger", "morphologizer"))
    try:
        import spacy_lookups_data  # noqa: F401  (the lookup tables nlp.initialize() reads)
    except ImportError as err:
        raise ImportError(
            "VQA answer lemmatisation needs spaCy's en_core_web_sm model or its lookup tables "
            f"(spacy-lookups-data); neither is installed: {_INSTALL}"
        ) from err
    nlp = spacy.blank("en")
    nlp.add_pipe("lemmatizer", config={"mode": "lookup"})
    nlp.initialize()
    return nlp, False


@functools.lru_cache(maxsize=None)
def _pipeline() -> Tuple[Any, bool]:
    # loading takes a second or more (en_core_web_sm longer): once per process
    return _load_pipeline()


def _join_lemmas(doc, has_pos: bool) -> str:
    # LAVIS (OK-VQA) lemmatises nouns and verbs only; without a tagger there is no
    # part of speech to go by, so every token is looked up
    words = [
        (token.lemma_ or token.text) if not has_pos or token.pos_ in ("NOUN", "VERB") else token.text
        for token in doc
    ]
    return " ".join(words)


def make_lemmatizer() -> Callable[[str], str]:
    """A function answer -> lemmatised answer, as LAVIS applies to OK-VQA predictions.

    Uses spaCy's ``en_core_web_sm`` when it is installed (nouns and verbs replaced by
    their lemma: "dogs running" -> "dog run"), otherwise a blank English pipeline with
    the lookup lemmatizer from ``spacy-lookups-data`` (every token looked up). Tokens
    are joined with single spaces, so contractions split ("don't" -> "do not" with the
    lookup tables). The lookup tables are keyed on lower-case words: lemmatise
    lower-case answers. The pipeline is loaded once per process.
    Raises ``ImportError`` with the pip command when spaCy or its data is missing.
    """
    nlp, has_pos = _pipeline()

    def lemmatize(answer: str) -> str:
        return _join_lemmas(nlp(answer), has_pos)

    return lemmatize
