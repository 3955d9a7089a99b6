"""Recognizer ensembles: every member proposes, every member scores every candidate, the best mean wins.

The combination works across architectures (CTC and attention), input sizes and processes, because it
only needs two things from a member (:class:`Member`, or anything shaped like it):

1. **propose** (round 1): read each crop with the member's own decoder (greedy or beam, as its model
   folder or overrides say) and return the text with its own length-normalised log-likelihood;
2. **score** (round 2): the length-normalised log-likelihood of *given* texts for each crop: the CTC
   forward algorithm for CTC models, teacher forcing for attention models (both
   ``log p(text | crop) / (len(text) + 1)``, see :mod:`ocrjobs.recognition.decode`).

For each crop the candidates are the distinct proposals; each member's score of a candidate it proposed
itself is its proposal score (the same number :meth:`Member.score` would return), so round 2 only asks a
member about the *other* members' candidates, and is skipped where all members agree or there is one
member. The candidate with the highest mean score over members wins; members may carry weights in that
mean (``Member.weight``, fitted on held-out data: ``benchmarks/fit_ensemble_weights.py``).

**Language model.** A member that decodes by beam search fused with a character language model
(``lm.json``) picks its text by ``log p(text) + lm_weight * log p_lm(text) + length_bonus * len(text)``,
not by likelihood alone: its likelihood of its own reading is often lower than that of the greedy text
the language model overruled. So the ensemble ranks candidates the same way: the mean score plus the
term :meth:`Fusion.term` (that objective's language-model part, divided by ``len(text) + 1`` as the
scores are), with the language model, weight and bonus of the first member that fuses one
(:attr:`Member.fusion`). Without it a second member would bring back the very readings the first
member's language model had corrected. The confidence of a result stays ``exp`` of the mean score (the
members' own scale: ``drop_score`` applies to it); only the ranking includes the term. The rounds are plain functions
(:func:`scoring_requests`, :func:`combine`), so an in-process loop (:func:`run_ensemble`, used by
evaluation) and the Serve ingress (which awaits member deployments, :func:`run_ensemble_async`) run the
same code.

**Charsets.** Members should share one charset. Where they do not, a candidate with a character some
member cannot encode (or a CTC member cannot align in its frames) gets ``-inf`` from that member and so a
mean of ``-inf``: it loses to any candidate every member can score. If every candidate of a crop is
``-inf``, the proposal with the best own score wins and the ensemble confidence is 0.

>>> combine(
...     ["a", "b"],
...     [[Proposal("CASH", -0.1)], [Proposal("CA5H", -0.2)]],
...     [[["CA5H"]], [["CASH"]]],
...     [[[-2.0]], [[-0.3]]],
... )[0].text
'CASH'
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, overload

import numpy as np

if TYPE_CHECKING:
    from ocrjobs.recognition.predictor import RecognitionPredictor

__all__ = [
    "AsyncMember",
    "Candidate",
    "Ensemble",
    "EnsembleResult",
    "Fusion",
    "Member",
    "MemberOutput",
    "Proposal",
    "SyncMember",
    "combine",
    "ensemble_drop_score",
    "ensemble_fusion",
    "folder_or_members",
    "member_names",
    "member_weights",
    "run_ensemble",
    "run_ensemble_async",
    "scoring_requests",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Proposal:
    """A member's reading of one crop.

    Attributes:
        text: the decoded text.
        log_score: the member's length-normalised log-likelihood of ``text`` (``-inf``: nothing could
            be read, e.g. an empty crop).
        char_spans: where each character lies along the crop (``RecognizedText.char_spans``; ``None``
            from attention members).
    """

    text: str
    log_score: float
    char_spans: tuple[tuple[float, float], ...] | None = None


@dataclass(frozen=True)
class MemberOutput:
    """One member's own reading, reported beside the ensemble's choice.

    Attributes:
        name: the member's name.
        text: what the member read.
        score: its confidence in ``[0, 1]`` (``exp`` of its log score).
    """

    name: str
    text: str
    score: float


@dataclass(frozen=True)
class Candidate:
    """A candidate text of one crop and how every member scored it.

    Attributes:
        text: the candidate.
        member_scores: length-normalised log-likelihood under each member, in member order (``-inf``:
            that member cannot produce the text).
        mean: the (weighted) mean of ``member_scores``.
        rank: what the ensemble ranks by: ``mean`` plus the language-model term (:class:`Fusion`), or
            ``mean`` alone where no member fuses a language model.
    """

    text: str
    member_scores: tuple[float, ...]
    mean: float
    rank: float


@dataclass(frozen=True)
class EnsembleResult:
    """The ensemble's reading of one crop.

    ``text`` and ``score`` have the meaning they have on
    :class:`~ocrjobs.recognition.predictor.RecognizedText`, so an :class:`Ensemble` can stand in for a
    single predictor (``ocrjobs.pipeline.ocr_images``).

    Attributes:
        text: the winning candidate.
        score: ensemble confidence in ``[0, 1]``: ``exp`` of the winner's mean score.
        members: each member's own reading, in member order.
        candidates: every candidate with its scores, best first.
        char_spans: the character spans of the first proposal of the winning text that has them
            (word boxes), ``None`` if none has.
    """

    text: str
    score: float
    members: tuple[MemberOutput, ...]
    candidates: tuple[Candidate, ...] = field(default=())
    char_spans: tuple[tuple[float, float], ...] | None = None


@dataclass(frozen=True)
class Fusion:
    """A character language model fused into an ensemble's ranking, as a member's beam search fuses it.

    Attributes:
        lm: the language model (:class:`~ocrjobs.recognition.lm.CharNgramLM`).
        weight: the member's ``lm_weight``.
        bonus: the member's ``length_bonus`` per character.

    >>> from ocrjobs.recognition.lm import CharNgramLM
    >>> fusion = Fusion(CharNgramLM.fit(["TOTAL", "TOTAL DUE"], "ADELOTU ", order=3), weight=0.5, bonus=0.0)
    >>> fusion.term("TOTAL") > fusion.term("TATOL")
    True
    """

    lm: Any
    weight: float
    bonus: float

    def term(self, text: str) -> float:
        """The language model's part of the beam objective for ``text``, length-normalised as the members'
        scores are: ``(weight * log p_lm(text) + bonus * len(text)) / (len(text) + 1)``."""
        return (self.weight * self.lm.score(text) + self.bonus * len(text)) / (len(text) + 1)


class SyncMember(Protocol):
    """What :func:`run_ensemble` needs from a member (:class:`Member` is one)."""

    name: str

    def propose(self, crops: Sequence[np.ndarray]) -> list[Proposal]:
        """One proposal per crop."""
        ...

    def score(self, crops: Sequence[np.ndarray], candidates: Sequence[Sequence[str]]) -> list[list[float]]:
        """For each crop, the length-normalised log-likelihood of each of its candidate texts."""
        ...


class AsyncMember(Protocol):
    """What :func:`run_ensemble_async` needs from a member (the Serve ingress wraps deployment handles)."""

    name: str

    async def propose(self, crops: Sequence[np.ndarray]) -> list[Proposal]:
        """One proposal per crop."""
        ...

    async def score(
        self, crops: Sequence[np.ndarray], candidates: Sequence[Sequence[str]]
    ) -> list[list[float]]:
        """For each crop, the length-normalised log-likelihood of each of its candidate texts."""
        ...


def _log(confidence: float) -> float:
    return math.log(confidence) if confidence > 0.0 else -math.inf


def _exp(log_score: float) -> float:
    return math.exp(log_score) if log_score > -math.inf else 0.0


class Member:
    """An ensemble member: a :class:`~ocrjobs.recognition.predictor.RecognitionPredictor` seen through
    ``propose``/``score``. Serve's ``Recognizer`` deployment and :class:`Ensemble` both hold these.

    Args:
        predictor: the member's predictor (its ``decoder`` setting decides greedy or beam proposals).
        name: the member's name in results; defaults to the predictor's name.

    >>> from ocrjobs.recognition.models import build_recognizer
    >>> from ocrjobs.recognition.predictor import RecognitionPredictor
    >>> from ocrjobs.recognition.tokenizer import CTCTokenizer
    >>> tok = CTCTokenizer()
    >>> model = build_recognizer("crnn_small", tok.num_classes, channels=(8, 8, 8, 8), hidden=8)
    >>> member = Member(RecognitionPredictor(model, tok), name="tiny")
    >>> crop = np.zeros((20, 60, 3), np.uint8)
    >>> proposal = member.propose([crop])[0]
    >>> abs(member.score([crop], [[proposal.text]])[0][0] - proposal.log_score) < 1e-4
    True
    """

    def __init__(self, predictor: RecognitionPredictor, name: str | None = None, weight: float = 1.0) -> None:
        self.predictor = predictor
        self.name = name or predictor.name
        self.weight = member_weights([weight], 1)[0]

    @property
    def fusion(self) -> Fusion | None:
        """The language model this member's beam search fuses (``None``: greedy decoding or no ``lm``)."""
        p = self.predictor
        if p.lm is None or p.decoder != "beam":
            return None
        return Fusion(p.lm, p.lm_weight, p.length_bonus)

    @classmethod
    def from_model_dir(
        cls,
        path: str | Path,
        device: str = "cpu",
        name: str | None = None,
        weight: float = 1.0,
        **overrides: Any,
    ) -> Member:
        """Load a member from a recognition model folder.

        Args:
            path: the model folder (local or ``s3://``).
            device: torch device.
            name: the member's name; defaults to the model's name.
            weight: the member's weight in the ensemble's mean (:func:`combine`).
            **overrides: predictor settings that win over the folder's (``decoder="beam"``...).

        Returns:
            The member.
        """
        from ocrjobs.recognition.predictor import RecognitionPredictor

        predictor = RecognitionPredictor.from_model_dir(path, device=device, **overrides)
        return cls(predictor, name=name, weight=weight)

    def propose(self, crops: Sequence[np.ndarray]) -> list[Proposal]:
        """Round 1: read each crop with the member's own decoder.

        Args:
            crops: ``[h, w, 3]`` uint8 RGB line crops.

        Returns:
            One proposal per crop; its ``log_score`` is ``log`` of the predictor's line confidence, which
            is the length-normalised log-likelihood :meth:`score` gives the same text.
        """
        return [
            Proposal(r.text, _log(r.score), None if r.char_spans is None else tuple(r.char_spans))
            for r in self.predictor(crops)
        ]

    def score(self, crops: Sequence[np.ndarray], candidates: Sequence[Sequence[str]]) -> list[list[float]]:
        """Round 2: length-normalised log-likelihood of each crop's candidate texts under this member.

        CTC members use the forward algorithm over all alignments, attention members teacher forcing;
        both divide by ``len(text) + 1``. Texts with characters outside the member's charset, texts a
        CTC member cannot align in its frames and every text of an empty crop get ``-inf``.

        Args:
            crops: ``[h, w, 3]`` uint8 RGB line crops.
            candidates: for each crop, the texts to score (may be empty).

        Returns:
            For each crop, one score per candidate.
        """
        return self.predictor.score(crops, candidates)

    def info(self) -> dict[str, Any]:
        """What this member is (for ``/v1/models`` and logs): name, version, architecture, input size."""
        p = self.predictor
        return {
            "name": self.name,
            "model": p.name,
            "version": p.version,
            "arch": p.model.config.arch,
            "decoding": p.tokenizer.decoding,
            "decoder": p.decoder,
            "height": p.height,
            "width": p.width,
            # Variable-height formula models: inputs up to this high (None: every input is `height`).
            "max_height": p.max_height,
            "charset_size": p.tokenizer.num_classes - 1,
            "charset_name": p.tokenizer.to_dict().get("name", "chars"),
            # Members whose fingerprints match share a vocabulary (see the module docstring).
            "charset_sha1": hashlib.sha1(
                json.dumps(p.tokenizer.to_dict(), sort_keys=True).encode("utf-8")
            ).hexdigest()[:12],
            "device": str(p.device),
            "drop_score": p.drop_score,
        }


@overload
def folder_or_members(value: str | list[str], what: str) -> str | list[str]: ...


@overload
def folder_or_members(value: None, what: str) -> None: ...


def folder_or_members(value: str | list[str] | None, what: str) -> str | list[str] | None:
    """A config's recognizer field as given: one folder, or a list of folders read as their ensemble.

    The list must be non-empty and name no folder twice (:func:`member_names`); a one-item list is
    that folder. The bulk job's ``recognizer`` and eval's ``model``/``rec_model`` validate with it.

    Raises:
        ValueError: an empty list (``what`` names it in the message) or a folder named twice.
    """
    if isinstance(value, list):
        if not value:
            raise ValueError(f"an empty list of {what}")
        member_names(value)  # the same folder twice is an error
        if len(value) == 1:
            return value[0]
    return value


def member_names(paths: Sequence[str | Path]) -> list[str]:
    """Member names for model folders: each folder's own name, as Serve names its members
    (``models/satrn_latex`` -> ``satrn_latex``), or every path as given where two folders share a name.

    Args:
        paths: model folders (local or ``s3://``), in member order.

    Returns:
        One unique name per folder.

    Raises:
        ValueError: the same folder is named twice.

    >>> member_names(["models/satrn_latex", "s3://m/satrn64_latex/"])
    ['satrn_latex', 'satrn64_latex']
    >>> member_names(["runs/a/model", "runs/b/model"])
    ['runs/a/model', 'runs/b/model']
    """
    from ocrjobs import storage

    given = [str(p).rstrip("/") for p in paths]
    repeated = sorted({p for p in given if given.count(p) > 1})
    if repeated:
        raise ValueError(f"the same model folder is named more than once: {repeated}")
    names = [storage.basename(p) for p in given]
    return names if len(set(names)) == len(names) else given


def scoring_requests(proposals: Sequence[Sequence[Proposal]]) -> list[list[list[str]]]:
    """Which texts each member must score in round 2.

    Args:
        proposals: ``proposals[m][i]`` is member ``m``'s proposal for crop ``i``.

    Returns:
        ``requests[m][i]``: the distinct texts other members proposed for crop ``i`` that member ``m``
        did not propose itself (its own proposal already carries its score). All lists are empty when
        the members agree everywhere or there is one member.

    Raises:
        ValueError: members proposed for different numbers of crops.
    """
    counts = {len(p) for p in proposals}
    if len(counts) > 1:
        raise ValueError(f"members proposed for different numbers of crops: {[len(p) for p in proposals]}")
    n_crops = counts.pop() if counts else 0
    requests: list[list[list[str]]] = [[[] for _ in range(n_crops)] for _ in proposals]
    for i in range(n_crops):
        texts = list(dict.fromkeys(p[i].text for p in proposals))
        for m, own in enumerate(proposals):
            requests[m][i] = [t for t in texts if t != own[i].text]
    return requests


def member_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    """The members' weights in the mean (:func:`combine`): ``None`` is 1 for every member.

    Raises:
        ValueError: not one weight per member, a negative weight, or all weights 0.
    """
    if weights is None:
        return [1.0] * n
    out = [float(w) for w in weights]
    if len(out) != n or any(not math.isfinite(w) or w < 0 for w in out) or not any(out):
        raise ValueError(f"need {n} finite weights >= 0, not all 0; got {list(weights)}")
    return out


def combine(
    names: Sequence[str],
    proposals: Sequence[Sequence[Proposal]],
    requests: Sequence[Sequence[Sequence[str]]],
    scores: Sequence[Sequence[Sequence[float]]],
    weights: Sequence[float] | None = None,
    fusion: Fusion | None = None,
) -> list[EnsembleResult]:
    """Pick each crop's candidate with the best (weighted) mean score over members, plus the language
    model's term where ``fusion`` is given (see the module docstring).

    Args:
        names: member names, in member order.
        proposals: ``proposals[m][i]``: member ``m``'s proposal for crop ``i`` (round 1).
        requests: ``requests[m][i]``: the texts member ``m`` scored for crop ``i``
            (:func:`scoring_requests`).
        scores: ``scores[m][i][k]``: member ``m``'s score of ``requests[m][i][k]`` (round 2).
        weights: each member's weight in the mean (``None``: equal). Scores are length-normalised
            log-likelihoods, so a weight is also a calibration: it scales how sharply a member's
            probabilities count. A member of weight 0 still proposes candidates but does not vote.
        fusion: the language model to rank with (:func:`ensemble_fusion`); ``None`` ranks by the mean.

    Returns:
        One result per crop, its candidates best first. Tie rule: equal ranks go to the candidate
        proposed first (in member order); if every candidate's mean is ``-inf``, the proposal with the
        best own score wins with confidence 0.

    Raises:
        ValueError: the shapes of the arguments disagree, a candidate was not scored by a member, or
            the weights are invalid (:func:`member_weights`).
    """
    if not (len(names) == len(proposals) == len(requests) == len(scores)) or not names:
        raise ValueError(
            f"need at least one member and one entry per member: {len(names)} names, "
            f"{len(proposals)} proposals, {len(requests)} requests, {len(scores)} score lists"
        )
    w = member_weights(weights, len(names))
    n_crops = len(proposals[0])
    results: list[EnsembleResult] = []
    for i in range(n_crops):
        own = [p[i] for p in proposals]
        texts = list(dict.fromkeys(p.text for p in own))
        table: list[dict[str, float]] = []
        for m in range(len(names)):
            asked, got = requests[m][i], scores[m][i]
            if len(asked) != len(got):
                raise ValueError(f"member {names[m]!r}, crop {i}: {len(asked)} texts but {len(got)} scores")
            row = dict(zip(asked, got, strict=True))
            row[own[m].text] = own[m].log_score
            missing = [t for t in texts if t not in row]
            if missing:
                raise ValueError(f"member {names[m]!r} did not score {missing!r} for crop {i}")
            table.append(row)
        candidates = []
        for text in texts:
            member_scores = tuple(float(row[text]) for row in table)
            mean = _mean(member_scores, w)
            rank = mean + fusion.term(text) if fusion is not None and mean > -math.inf else mean
            candidates.append(Candidate(text, member_scores, mean, rank))
        # Best own score among the proposers breaks ties between -inf means (see the docstring).
        best_own = {t: max(p.log_score for p in own if p.text == t) for t in texts}
        ranked = sorted(
            range(len(candidates)),
            key=lambda k: (candidates[k].rank, best_own[candidates[k].text], -k),
            reverse=True,
        )
        winner = candidates[ranked[0]]
        spans = next((p.char_spans for p in own if p.text == winner.text and p.char_spans is not None), None)
        results.append(
            EnsembleResult(
                text=winner.text,
                score=_exp(winner.mean),
                members=tuple(
                    MemberOutput(n, p.text, _exp(p.log_score)) for n, p in zip(names, own, strict=True)
                ),
                candidates=tuple(candidates[k] for k in ranked),
                char_spans=spans,
            )
        )
    return results


def _mean(values: Sequence[float], weights: Sequence[float]) -> float:
    voting = [(v, w) for v, w in zip(values, weights, strict=True) if w > 0]
    if any(v == -math.inf for v, _ in voting):  # a voter that cannot produce the text vetoes it
        return -math.inf
    return float(sum(v * w for v, w in voting) / sum(w for _, w in voting))


def run_ensemble(members: Sequence[SyncMember], crops: Sequence[np.ndarray]) -> list[EnsembleResult]:
    """Both rounds in this process, one member after the other (evaluation, scripts).

    Args:
        members: the members (at least one); their ``weight`` and ``fusion`` attributes, where they
            have them, give the weights of the mean and the language model (:func:`ensemble_fusion`).
        crops: ``[h, w, 3]`` uint8 RGB line crops.

    Returns:
        One :class:`EnsembleResult` per crop.

    Raises:
        ValueError: no members.
    """
    if not members:
        raise ValueError("an ensemble needs at least one member")
    proposals = [m.propose(crops) for m in members]
    requests = scoring_requests(proposals)
    scores: list[list[list[float]]] = [
        m.score(crops, asked) if any(asked) else [[] for _ in crops]
        for m, asked in zip(members, requests, strict=True)
    ]
    return combine(
        [m.name for m in members], proposals, requests, scores, _weights(members), ensemble_fusion(members)
    )


def _weights(members: Sequence[SyncMember] | Sequence[AsyncMember]) -> list[float]:
    # A member without a weight attribute (a test double, a wrapper) counts 1.
    return [float(getattr(m, "weight", 1.0)) for m in members]


def ensemble_fusion(members: Sequence[Any]) -> Fusion | None:
    """The language model an ensemble ranks with: that of the first member (in member order) whose
    ``fusion`` is set, else ``None``. With one member there is nothing to rank, so ``None``.
    """
    if len(members) < 2:
        return None
    return next((f for f in (getattr(m, "fusion", None) for m in members) if f is not None), None)


async def run_ensemble_async(
    members: Sequence[AsyncMember], crops: Sequence[np.ndarray]
) -> list[EnsembleResult]:
    """Both rounds with the members working in parallel (the Serve ingress over member deployments).

    Args:
        members: the members (at least one); their calls of a round are awaited together. Weights and
            language model as in :func:`run_ensemble`.
        crops: ``[h, w, 3]`` uint8 RGB line crops.

    Returns:
        One :class:`EnsembleResult` per crop.

    Raises:
        ValueError: no members.
    """
    if not members:
        raise ValueError("an ensemble needs at least one member")
    proposals = list(await asyncio.gather(*(m.propose(crops) for m in members)))
    requests = scoring_requests(proposals)
    # Members with nothing to score (all agree, or a single member) are not called at all.
    asking = [k for k, asked in enumerate(requests) if any(asked)]
    answers = await asyncio.gather(*(members[k].score(crops, requests[k]) for k in asking))
    scores: list[list[list[float]]] = [[[] for _ in crops] for _ in members]
    for k, answer in zip(asking, answers, strict=True):
        scores[k] = answer
    return combine(
        [m.name for m in members], proposals, requests, scores, _weights(members), ensemble_fusion(members)
    )


def ensemble_drop_score(infos: Sequence[dict[str, Any]]) -> float:
    """The ``drop_score`` of an ensemble from its members' :meth:`Member.info`: the smallest one."""
    return min((float(i.get("drop_score") or 0.0) for i in infos), default=0.0)


class Ensemble:
    """An in-process ensemble that reads crops like a single predictor does.

    Args:
        members: the members (at least one), ideally sharing one charset.

    Raises:
        ValueError: no members, or two members share a name.
    """

    def __init__(self, members: Sequence[Member]) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one member")
        names = [m.name for m in members]
        if len(set(names)) != len(names):
            raise ValueError(f"member names must be unique, got {names}")
        self.members = list(members)
        if len({m.info()["charset_sha1"] for m in self.members}) > 1:
            logger.warning(
                "ensemble members have different charsets: candidates a member cannot encode score -inf"
            )

    @classmethod
    def from_model_dirs(
        cls,
        paths: Sequence[str | Path],
        device: str = "cpu",
        weights: Sequence[float] | None = None,
        **overrides: Any,
    ) -> Ensemble:
        """Load one member per recognition model folder, named by :func:`member_names` (as Serve names
        its members: the folders' names).

        Args:
            paths: model folders, in member order.
            device: torch device for every member.
            weights: each member's weight in the mean (``None``: equal).
            **overrides: predictor settings for every member.

        Returns:
            The ensemble.
        """
        names = member_names(paths)
        w = member_weights(weights, len(paths))
        return cls(
            [
                Member.from_model_dir(p, device=device, name=n, weight=wt, **overrides)
                for p, n, wt in zip(paths, names, w, strict=True)
            ]
        )

    @property
    def drop_score(self) -> float:
        """The page-line confidence floor of the ensemble: its least demanding member's ``drop_score``
        (the ensemble's confidence, ``exp`` of the winner's mean log score, is on the members' scale)."""
        return ensemble_drop_score([m.info() for m in self.members])

    def __call__(self, crops: Sequence[np.ndarray]) -> list[EnsembleResult]:
        """Read line crops (see :func:`run_ensemble`)."""
        return run_ensemble(self.members, crops)
