"""COCO caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr, SPICE) with pycocoevalcap.

The same pipeline as ``pycocoevalcap.eval.COCOEvalCap``: Stanford PTB tokenisation of
references and predictions, then each scorer on the tokenised text. Scores are on
pycocoevalcap's scale (BLEU, METEOR, ROUGE-L, SPICE in 0..1; CIDEr-D in 0..10).

Java is needed (the tokenizer and METEOR are jars). METEOR's start-up loads a 60 MB
paraphrase table (~5 s, more on a busy machine): :class:`CaptionScorer` keeps one
METEOR process for several evaluations; :func:`caption_metrics` is the one-shot form.

SPICE needs Stanford CoreNLP 3.6.0, which pycocoevalcap downloads (~380 MB from
nlp.stanford.edu) the first time SPICE is built. We never let it: SPICE runs only
when both CoreNLP jars are already in pycocoevalcap's ``spice/lib`` folder;
otherwise, or if SPICE fails, ``SPICE`` is left out of the result and a warning
says why (once per reason). :func:`spice_unavailable_reason` tells a caller ahead.
"""
from __future__ import annotations

import atexit

import logging
import os
import shutil
import threading
from typing import Any, Dict, Hashable, List, Mapping, Optional

logger = logging.getLogger(__name__)

METRIC_NAMES = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")
_CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
_warned: set = set()


def _spice_lib_dir() -> str:
    import pycocoevalcap.spice.spice as spice_module

    return os.path.join(os.path.dirname(os.path.abspath(spice_module.__file__)), "lib")


def spice_unavailable_reason() -> Optional[str]:
    """Why SPICE cannot run on this machine, or ``None`` when it can."""
    if shutil.which("java") is None:
        return "SPICE needs Java, and `java` is not on PATH"
    lib = _spice_lib_dir()
    missing = [jar for jar in _CORENLP_JARS if not os.path.isfile(os.path.join(lib, jar))]
    if missing:
        return (
            f"SPICE needs Stanford CoreNLP 3.6.0 ({', '.join(missing)} missing from {lib}); pycocoevalcap would "
            "download it from nlp.stanford.edu, which vlft does not attempt. To enable SPICE, copy both jars from "
            "stanford-corenlp-full-2015-12-09.zip into that folder"
        )
    return None


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        logger.warning("SPICE skipped: %s", message)


def _check_inputs(ground_truth: Mapping[Any, List[str]], predictions: Mapping[Any, str]) -> None:
    if not predictions and not ground_truth:
        raise ValueError("caption_metrics: no predictions and no ground truth to score")
    missing_gt = [k for k in predictions if k not in ground_truth]
    missing_pred = [k for k in ground_truth if k not in predictions]
    for missing, have, lack in ((missing_gt, "predictions", "ground_truth"), (missing_pred, "ground_truth", "predictions")):
        if missing:
            example = missing[0]
            hint = ""
            if any(str(k) == str(example) for k in (ground_truth if lack == "ground_truth" else predictions)):
                hint = " (an id with the same text but another type is there: are ids str on one side and int on the other?)"
            raise ValueError(
                f"caption_metrics: {len(missing)} id(s) in {have} are not in {lack}, e.g. {example!r}{hint}; "
                f"both must cover the same examples ({len(predictions)} predictions, {len(ground_truth)} ground-truth entries)"
            )
    for key, refs in ground_truth.items():
        if isinstance(refs, str) or not isinstance(refs, (list, tuple)):
            raise TypeError(f"caption_metrics: ground_truth[{key!r}] must be a list of reference captions, got {type(refs).__name__}")
        if not refs:
            raise ValueError(f"caption_metrics: ground_truth[{key!r}] has no reference caption")
        for ref in refs:
            if not isinstance(ref, str):
                raise TypeError(f"caption_metrics: ground_truth[{key!r}] holds a {type(ref).__name__}, expected str captions")
    for key, pred in predictions.items():
        if not isinstance(pred, str):
            raise TypeError(f"caption_metrics: predictions[{key!r}] must be one caption string, got {type(pred).__name__}")


def _one_line(text: str) -> str:
    # the tokenizer reads one caption per line: a stray \r or \u2028 would shift
    # every later caption onto the wrong image
    return " ".join(text.splitlines())


def _tokenize(ground_truth: Mapping[Any, List[str]], predictions: Mapping[Any, str]):
    """PTB-tokenise both sides in one Java call (COCOEvalCap makes two)."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    keys = list(ground_truth)
    batch = {("gt", k): [{"caption": _one_line(c)} for c in ground_truth[k]] for k in keys}
    batch.update({("res", k): [{"caption": _one_line(predictions[k])}] for k in keys})
    tokens = PTBTokenizer().tokenize(batch)
    for (side, k), captions in batch.items():
        if len(tokens.get((side, k), ())) != len(captions):
            raise RuntimeError(f"PTB tokenizer output does not line up with its input (at {side} id {k!r})")
    return {k: tokens[("gt", k)] for k in keys}, {k: tokens[("res", k)] for k in keys}


class CaptionScorer:
    """Scores caption corpora, keeping one METEOR Java process across calls.

    Use as a context manager (or call :meth:`close`) so the METEOR JVM ends with it.
    ``timeout_s`` bounds one METEOR exchange: past it the process is killed and a
    ``RuntimeError`` raised instead of waiting on its pipe forever.
    """

    def __init__(self, spice: bool = True, timeout_s: float = 1800.0):
        self.spice = spice
        self.timeout_s = timeout_s
        self._meteor = None

    def __enter__(self) -> "CaptionScorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        self.close()

    def close(self) -> None:
        """End the METEOR process (safe to call twice)."""
        meteor, self._meteor = getattr(self, "_meteor", None), None
        if meteor is None:
            return
        proc = meteor.meteor_p
        for close in (proc.stdin.close, proc.kill, proc.wait):
            try:
                close()
            except Exception:  # noqa: BLE001 - tearing down a process that may already be gone
                pass
        # pycocoevalcap's Meteor.__del__ takes this lock; a failed exchange leaves it
        # held, and the garbage collector would then block forever
        if meteor.lock.locked():
            meteor.lock.release()

    def __call__(self, ground_truth: Mapping[Hashable, List[str]], predictions: Mapping[Hashable, str]) -> Dict[str, float]:
        """Corpus scores: ``Bleu_1..4``, ``METEOR``, ``ROUGE_L``, ``CIDEr`` (and ``SPICE`` where it can run)."""
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge

        _check_inputs(ground_truth, predictions)
        if shutil.which("java") is None:
            raise RuntimeError("caption metrics need Java (the PTB tokenizer and METEOR are jars); `java` is not on PATH")
        self._start_meteor()  # its JVM loads while we tokenise and score the rest
        gts, res = _tokenize(ground_truth, predictions)

        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        scores = {f"Bleu_{n + 1}": float(b) for n, b in enumerate(bleu)}
        scores["METEOR"] = self._meteor_score(gts, res)
        scores["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
        scores["CIDEr"] = float(Cider().compute_score(gts, res)[0])
        if self.spice:
            spice = _spice_score(gts, res)
            if spice is not None:
                scores["SPICE"] = spice
        return scores

    def start(self) -> None:
        """Start METEOR's JVM now (it loads its 60 MB of tables in the background while the
        caller goes on); the first score otherwise starts it and waits for it."""
        self._start_meteor()

    def _start_meteor(self) -> None:
        if self._meteor is None:
            from pycocoevalcap.meteor.meteor import Meteor

            self._meteor = Meteor()

    def _meteor_score(self, gts, res) -> float:
        # "|||" separates fields in METEOR's protocol; pycocoevalcap strips it from the hypothesis only
        refs = {k: [r.replace("|||", "") for r in v] for k, v in gts.items()}
        meteor, timed_out = self._meteor, threading.Event()

        def kill() -> None:  # a dead process makes the blocked readline return, so the call ends
            timed_out.set()
            meteor.meteor_p.kill()

        watchdog = threading.Timer(self.timeout_s, kill)
        watchdog.daemon = True
        watchdog.start()
        try:
            score, _ = meteor.compute_score(refs, res)
        except Exception as err:
            self.close()  # the process is out of step with its pipe: the next call starts a fresh one
            why = f" (no answer within {self.timeout_s:g} s)" if timed_out.is_set() else ""
            raise RuntimeError(f"METEOR (pycocoevalcap's meteor-1.5.jar) failed{why}: {err!r}") from err
        finally:
            watchdog.cancel()
        return float(score)


def _spice_score(gts, res) -> Optional[float]:
    reason = spice_unavailable_reason()
    if reason is not None:
        _warn_once(reason)
        return None
    try:
        import pycocoevalcap.spice.spice as spice_module

        score, _ = spice_module.Spice().compute_score(gts, res)
        return float(score)
    except Exception as err:  # noqa: BLE001 - SPICE is optional; a failure must not end the evaluation
        _warn_once(f"SPICE failed: {type(err).__name__}: {err}")
        return None


_SHARED: Dict[bool, CaptionScorer] = {}


def shared_scorer(spice: bool = False) -> CaptionScorer:
    """The process's scorer (one METEOR JVM for every evaluation and task in the process,
    e.g. a Python session that evaluates several models); closed when the process exits."""
    if not _SHARED:
        atexit.register(lambda: [scorer.close() for scorer in _SHARED.values()])
    if spice not in _SHARED:
        _SHARED[spice] = CaptionScorer(spice=spice)
    return _SHARED[spice]


def caption_metrics(ground_truth: Dict[Any, List[str]], predictions: Dict[Any, str], spice: bool = True) -> Dict[str, float]:
    """COCO caption metrics of ``predictions`` (id -> caption) against ``ground_truth`` (id -> references).

    Both must hold the same ids (``ValueError`` naming one that is not). An empty
    prediction is valid and scores 0. Returns ``Bleu_1``..``Bleu_4``, ``METEOR``,
    ``ROUGE_L``, ``CIDEr`` and, when ``spice`` is set and SPICE can run here, ``SPICE``.
    Starts METEOR's JVM each call: hold a :class:`CaptionScorer` to evaluate repeatedly.
    """
    with CaptionScorer(spice=spice) as scorer:
        return scorer(ground_truth, predictions)
