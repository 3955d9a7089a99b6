"""The recognizer ensemble: scoring is length-normalised, candidates are ranked by their mean score.

Members are real :class:`RecognitionPredictor` objects around two tiny hand-made models whose outputs
do not depend on the image: a CTC model emitting a fixed table of frame probabilities and an attention
model emitting a fixed distribution per decoding step. Their proposals and scores can therefore be
worked out by hand, and the CTC scores are checked against a brute-force sum over all alignments.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Sequence
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from ocrjobs.recognition.aster import AttentionRecognizer, State
from ocrjobs.recognition.ensemble import (
    Ensemble,
    Fusion,
    Member,
    Proposal,
    combine,
    ensemble_fusion,
    member_weights,
    run_ensemble,
    run_ensemble_async,
    scoring_requests,
)
from ocrjobs.recognition.lm import CharNgramLM
from ocrjobs.recognition.predictor import RecognitionPredictor
from ocrjobs.recognition.tokenizer import AttentionTokenizer, Charset, CTCTokenizer

CHARS = "ACHS5"
CROP = np.full((32, 96, 3), 255, np.uint8)
HIGH = 0.98  # probability of the intended class where a table is "sure"


class TableCTC(nn.Module):
    """A CTC "model" whose logits are a fixed ``[T, C]`` probability table, whatever the image."""

    decoding = "ctc"

    def __init__(self, probs: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("log_probs", probs.log())
        self.config = SimpleNamespace(arch="table_ctc")

    @property
    def num_classes(self) -> int:
        return int(self.log_probs.shape[1])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.log_probs.unsqueeze(0).expand(images.shape[0], -1, -1)  # [T, C] -> [b, T, C]


class TableAttention(AttentionRecognizer):
    """An attention "model" whose step ``t`` always predicts the fixed distribution ``probs[t]``."""

    def __init__(self, probs: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("log_probs", probs.log())
        self.config = SimpleNamespace(arch="table_attention")

    @property
    def num_classes(self) -> int:
        return int(self.log_probs.shape[1])

    def _rows(self, positions: torch.Tensor) -> torch.Tensor:
        return self.log_probs[positions.clamp(max=self.log_probs.shape[0] - 1)]

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images.new_zeros(images.shape[0], 1, 1)

    def init_state(self, memory: torch.Tensor) -> State:
        return (torch.zeros(memory.shape[0], dtype=torch.long, device=memory.device),)

    def step(self, state: State, tokens: torch.Tensor) -> tuple[torch.Tensor, State]:
        (position,) = state
        return self._rows(position), (position + 1,)

    def decode(self, memory: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        rows = self._rows(torch.arange(targets.shape[1], device=targets.device))
        return rows.unsqueeze(0).expand(memory.shape[0], -1, -1)  # [L, C] -> [b, L, C]


def _row(num_classes: int, dist: dict[int, float]) -> list[float]:
    """A probability row: ``dist`` as given, the rest spread evenly over the other classes."""
    rest = (1.0 - sum(dist.values())) / (num_classes - len(dist))
    return [dist.get(c, rest) for c in range(num_classes)]


def _id(char: str, charset: str = CHARS) -> int:
    return charset.index(char) + 1  # 0 is the CTC blank / attention EOS


def ctc_member(
    third: dict[str, float], charset: str = CHARS, name: str = "ctc", decoder: str = "greedy"
) -> Member:
    """CTC member reading C, A, <third>, H over blank-separated frames."""
    n = len(charset) + 1
    frames: list[dict[int, float]] = [
        {_id("C", charset): HIGH},
        {0: HIGH},
        {_id("A", charset): HIGH},
        {0: HIGH},
        {_id(c, charset): p for c, p in third.items()},
        {0: HIGH},
        {_id("H", charset): HIGH},
        {0: HIGH},
    ]
    probs = torch.tensor([_row(n, f) for f in frames], dtype=torch.float64).float()
    tokenizer = CTCTokenizer(Charset(chars=charset))
    predictor = RecognitionPredictor(TableCTC(probs), tokenizer, decoder=decoder, name=name)  # type: ignore[arg-type]
    return Member(predictor)


def attention_member(third: dict[str, float], name: str = "att", decoder: str = "greedy") -> Member:
    """Attention member reading C, A, <third>, H, EOS, one step each."""
    n = len(CHARS) + 1
    steps: list[dict[int, float]] = [
        {_id("C"): HIGH},
        {_id("A"): HIGH},
        {_id(c): p for c, p in third.items()},
        {_id("H"): HIGH},
        {0: HIGH},
    ]
    probs = torch.tensor([_row(n, s) for s in steps]).float()
    tokenizer = AttentionTokenizer(Charset(chars=CHARS))
    model = TableAttention(probs)
    return Member(RecognitionPredictor(model, tokenizer, decoder=decoder, max_len=8, width=96, name=name))  # type: ignore[arg-type]


def brute_force_ctc(log_probs: torch.Tensor, target: Sequence[int]) -> float:
    """log p(target) by enumerating every frame path (independent of the CTC forward algorithm)."""
    probs = log_probs.double().exp()
    total = 0.0
    for path in itertools.product(range(probs.shape[1]), repeat=probs.shape[0]):
        collapsed = [k for k, _ in itertools.groupby(path) if k != 0]
        if collapsed == list(target):
            total += float(torch.prod(probs[torch.arange(len(path)), torch.tensor(path)]))
    return math.log(total) if total > 0 else -math.inf


# ---------------------------------------------------------------- scoring


def test_ctc_score_is_the_length_normalised_sum_over_alignments() -> None:
    torch.manual_seed(0)
    charset = "ab"
    probs = torch.softmax(torch.randn(5, 3) * 2, dim=-1)
    tokenizer = CTCTokenizer(Charset(chars=charset))
    member = Member(RecognitionPredictor(TableCTC(probs), tokenizer, name="t"))  # type: ignore[arg-type]
    texts = ["", "a", "ab", "ba", "aab", "abab"]
    scores = member.score([CROP], [texts])[0]
    for text, score in zip(texts, scores, strict=True):
        expected = brute_force_ctc(probs.log(), [_id(c, charset) for c in text]) / (len(text) + 1)
        assert score == pytest.approx(expected, rel=1e-4, abs=1e-5), text
    # Six labels cannot be aligned to five frames, nor can "aaa" + "a": repeats need a blank between.
    assert member.score([CROP], [["aaaaaa", "aaaa"]])[0] == [-math.inf, -math.inf]
    assert member.score([CROP], [["aaa"]])[0][0] > -math.inf


def test_attention_score_is_teacher_forced_and_length_normalised() -> None:
    member = attention_member({"S": 0.7, "5": 0.2})
    probs = member.predictor.model.log_probs.exp()  # type: ignore[union-attr]
    for text in ["CASH", "CA5H", "CA", "CASHA"]:
        ids = [_id(c) for c in text] + [0]
        expected = sum(math.log(float(probs[min(t, 4), k])) for t, k in enumerate(ids)) / len(ids)
        assert member.score([CROP], [[text]])[0][0] == pytest.approx(expected, rel=1e-5)


def test_length_normalisation_does_not_punish_long_confident_texts() -> None:
    # Every step gives the right token probability q, so every length scores exactly log q; an
    # unnormalised log-likelihood would fall with each extra character.
    q = 0.9
    for length in (1, 3, 7):
        rows = [_row(len(CHARS) + 1, {_id("A"): q})] * length + [_row(len(CHARS) + 1, {0: q})]
        model = TableAttention(torch.tensor(rows))
        tokenizer = AttentionTokenizer(Charset(chars=CHARS))
        member = Member(RecognitionPredictor(model, tokenizer, max_len=10, width=96, name="q"))
        assert member.score([CROP], [["A" * length]])[0][0] == pytest.approx(math.log(q), rel=1e-5)
        assert member.propose([CROP])[0].text == "A" * length


@pytest.mark.parametrize("seed", range(5))
def test_ctc_own_greedy_output_scores_at_least_its_perturbations(seed: int) -> None:
    charset = "abc"
    gen = torch.Generator().manual_seed(seed)
    # Peaked random frames (as a trained model's are): one class gets most of the mass in each frame.
    logits = torch.randn(10, 4, generator=gen)
    logits[torch.arange(10), torch.randint(0, 4, (10,), generator=gen)] += 4.0
    tokenizer = CTCTokenizer(Charset(chars=charset))
    member = Member(RecognitionPredictor(TableCTC(logits.softmax(-1)), tokenizer, name="r"))  # type: ignore[arg-type]
    own = member.propose([CROP])[0]
    perturbed = {own.text + c for c in charset} | {c + own.text for c in charset}
    for k in range(len(own.text)):
        perturbed.add(own.text[:k] + own.text[k + 1 :])
        perturbed.update(own.text[:k] + c + own.text[k + 1 :] for c in charset if c != own.text[k])
    perturbed.discard(own.text)
    texts = sorted(perturbed)
    own_score, *others = member.score([CROP], [[own.text, *texts]])[0]
    assert own_score == pytest.approx(own.log_score, abs=1e-5)  # a proposal carries its own score
    assert all(own_score >= s for s in others), dict(zip(texts, others, strict=True))


@pytest.mark.parametrize("decoder", ["greedy", "beam"])
def test_a_proposal_carries_the_score_the_member_gives_it(decoder: str) -> None:
    for member in (
        ctc_member({"5": 0.6, "S": 0.3}, decoder=decoder),
        attention_member({"S": 0.7, "5": 0.2}, decoder=decoder),
    ):
        proposal = member.propose([CROP])[0]
        assert member.score([CROP], [[proposal.text]])[0][0] == pytest.approx(proposal.log_score, abs=1e-5)


# ---------------------------------------------------------------- combination


@pytest.mark.parametrize(
    ("ctc_third", "att_third", "winner"),
    [
        # The CTC member leans to "5" weakly, the attention member to "S" strongly: "CASH" wins.
        ({"5": 0.6, "S": 0.38}, {"S": 0.9, "5": 0.08}, "CASH"),
        # The CTC member is sure of "5", the attention member only leans to "S": "CA5H" wins.
        ({"5": 0.95, "S": 0.03}, {"S": 0.55, "5": 0.43}, "CA5H"),
    ],
)
def test_two_disagreeing_members_the_higher_mean_score_wins(
    ctc_third: dict[str, float], att_third: dict[str, float], winner: str
) -> None:
    ctc, att = ctc_member(ctc_third), attention_member(att_third)
    result = Ensemble([ctc, att])([CROP])[0]
    # They disagree, and each member's own reading is reported.
    assert [(m.name, m.text) for m in result.members] == [("ctc", "CA5H"), ("att", "CASH")]
    # Independently: each member scores both texts; the mean decides.
    means = {
        text: (ctc.score([CROP], [[text]])[0][0] + att.score([CROP], [[text]])[0][0]) / 2
        for text in ("CA5H", "CASH")
    }
    assert max(means, key=lambda t: means[t]) == winner
    assert result.text == winner
    assert result.score == pytest.approx(math.exp(means[winner]), rel=1e-4)
    assert result.candidates[0].text == winner
    assert {c.text: c.mean for c in result.candidates} == pytest.approx(means, rel=1e-4)


def test_weights_decide_between_members_that_disagree() -> None:
    # Equal weights: the CTC member's "CA5H" wins (the second case above). Weighting the attention
    # member up turns the decision, and the mean is the weighted one.
    ctc, att = ctc_member({"5": 0.95, "S": 0.03}), attention_member({"S": 0.55, "5": 0.43})
    scores = {t: (ctc.score([CROP], [[t]])[0][0], att.score([CROP], [[t]])[0][0]) for t in ("CA5H", "CASH")}
    assert Ensemble([ctc, att])([CROP])[0].text == "CA5H"
    # The weight at which the two texts tie, doubled.
    weight = 2.0 * (scores["CA5H"][0] - scores["CASH"][0]) / (scores["CASH"][1] - scores["CA5H"][1])
    assert weight > 1.0
    att.weight = weight
    result = Ensemble([ctc, att])([CROP])[0]
    weighted = {t: (c + weight * a) / (1.0 + weight) for t, (c, a) in scores.items()}
    assert result.text == max(weighted, key=lambda t: weighted[t]) == "CASH"
    assert {c.text: c.mean for c in result.candidates} == pytest.approx(weighted, rel=1e-4)
    # The same weights through the Serve path (async rounds) give the same answer.
    assert asyncio.run(run_ensemble_async([_Async(ctc), _Async(att)], [CROP]))[0].text == "CASH"


def test_a_member_of_weight_zero_proposes_but_does_not_vote() -> None:
    proposals = [[Proposal("x", -0.1)], [Proposal("y", -0.05)]]
    requests = scoring_requests(proposals)
    # Member b scores "x" -inf (it cannot produce it): with b voting "x" is vetoed; with b's weight 0
    # a's preference decides, and b's proposal "y" is still a candidate a has scored.
    scores = [[[-3.0]], [[-math.inf]]]
    assert combine(["a", "b"], proposals, requests, scores)[0].text == "y"
    result = combine(["a", "b"], proposals, requests, scores, weights=[1.0, 0.0])[0]
    assert result.text == "x" and [c.text for c in result.candidates] == ["x", "y"]
    assert result.score == pytest.approx(math.exp(-0.1))


def _lm_member(third: dict[str, float]) -> Member:
    """The CTC member of ``ctc_member`` decoding by beam search fused with a language model that has
    only ever seen "CASH"."""
    table = ctc_member(third).predictor
    predictor = RecognitionPredictor(
        table.model,
        table.tokenizer,
        decoder="beam",
        beam_width=4,
        lm=CharNgramLM.fit(["CASH"] * 5, CHARS, order=3),
        lm_weight=1.0,
        length_bonus=0.5,
        name="ctc_lm",
    )
    return Member(predictor)


def test_the_ensemble_ranks_with_the_language_model_its_first_fusing_member_decodes_with() -> None:
    # The CTC member's frames lean to "5", but its language model turns its reading into "CASH"; the
    # attention member leans to "5" too. By likelihood alone both members prefer "CA5H", so an ensemble
    # ranking by the mean would undo the language model's correction; ranking by the mean plus the
    # language model's term (as the member's beam search ranks) keeps "CASH".
    lm_member, att = _lm_member({"5": 0.6, "S": 0.38}), attention_member({"5": 0.5, "S": 0.45})
    assert lm_member.propose([CROP])[0].text == "CASH" and att.propose([CROP])[0].text == "CA5H"
    fusion = lm_member.fusion
    assert fusion is not None and (fusion.weight, fusion.bonus) == (1.0, 0.5)
    assert ctc_member({"5": 0.6}).fusion is None  # greedy decoding fuses nothing
    assert ensemble_fusion([att, lm_member]) == fusion and ensemble_fusion([att]) is None
    assert ensemble_fusion([lm_member]) is None  # one member: nothing to rank

    result = Ensemble([lm_member, att])([CROP])[0]
    means = {c.text: c.mean for c in result.candidates}
    assert means["CA5H"] > means["CASH"]  # the members' likelihoods alone would pick "CA5H"
    assert result.text == "CASH"
    for c in result.candidates:
        assert c.rank == pytest.approx(c.mean + fusion.term(c.text))
    assert result.score == pytest.approx(math.exp(means["CASH"]))  # confidence: the mean, not the rank
    # The same through combine without the language model, and through the async (Serve) rounds.
    proposals = [lm_member.propose([CROP]), att.propose([CROP])]
    requests = scoring_requests(proposals)
    scores = [m.score([CROP], q) for m, q in zip([lm_member, att], requests, strict=True)]
    assert combine(["ctc_lm", "att"], proposals, requests, scores)[0].text == "CA5H"
    assert combine(["ctc_lm", "att"], proposals, requests, scores, fusion=fusion)[0].text == "CASH"
    wrapped = [_Async(lm_member), _Async(att)]
    wrapped[0].fusion = fusion  # type: ignore[attr-defined]
    assert asyncio.run(run_ensemble_async(wrapped, [CROP]))[0].text == "CASH"


def test_fusion_term_is_the_beam_objectives_language_model_part_per_character() -> None:
    lm = CharNgramLM.fit(["CASH"], CHARS, order=3)
    fusion = Fusion(lm, weight=0.3, bonus=1.0)
    assert fusion.term("CASH") == pytest.approx((0.3 * lm.score("CASH") + 1.0 * 4) / 5)
    assert fusion.term("") == pytest.approx(0.3 * lm.score(""))


def test_member_weights_are_checked() -> None:
    assert member_weights(None, 2) == [1.0, 1.0]
    for bad in ([1.0], [1.0, -0.5], [0.0, 0.0], [1.0, math.nan]):
        with pytest.raises(ValueError, match="weights"):
            member_weights(bad, 2)
    with pytest.raises(ValueError, match="weights"):
        Member(ctc_member({"5": 0.6}).predictor, weight=-1.0)


class _Async:
    """A member seen through async methods (as Serve's ingress sees deployment handles)."""

    def __init__(self, member: Member) -> None:
        self.member, self.name, self.weight = member, member.name, member.weight

    async def propose(self, crops: Sequence[np.ndarray]) -> list[Proposal]:
        return self.member.propose(crops)

    async def score(
        self, crops: Sequence[np.ndarray], candidates: Sequence[Sequence[str]]
    ) -> list[list[float]]:
        return self.member.score(crops, candidates)


def test_one_member_degenerates_to_that_member_without_a_scoring_round() -> None:
    member = ctc_member({"5": 0.6, "S": 0.38})
    calls: list[object] = []
    original = member.score
    member.score = lambda *args: calls.append(args) or original(*args)  # type: ignore[method-assign]
    result = run_ensemble([member], [CROP, CROP])
    assert calls == []
    own = member.predictor([CROP])[0]
    assert [r.text for r in result] == [own.text] * 2
    assert result[0].score == pytest.approx(own.score, rel=1e-6)


def test_agreeing_members_are_not_asked_to_score() -> None:
    proposals = [[Proposal("x", -0.1), Proposal("y", -0.2)], [Proposal("x", -0.3), Proposal("z", -0.4)]]
    assert scoring_requests(proposals) == [[[], ["z"]], [[], ["y"]]]


def test_a_candidate_a_member_cannot_encode_loses() -> None:
    # The second member's charset has no "5": it scores "CA5H" -inf, so "CASH" wins although the
    # first member prefers "CA5H" strongly.
    strong = ctc_member({"5": 0.97, "S": 0.01}, name="with5")
    no_five = ctc_member({"S": 0.5, "A": 0.3}, charset="ACHS", name="no5")
    result = Ensemble([strong, no_five])([CROP])[0]
    assert [m.text for m in result.members] == ["CA5H", "CASH"]
    assert result.text == "CASH"
    by_text = {c.text: c for c in result.candidates}
    assert by_text["CA5H"].member_scores[1] == -math.inf and by_text["CA5H"].mean == -math.inf


def test_when_every_candidate_is_minus_inf_the_best_own_proposal_wins_with_zero_confidence() -> None:
    results = combine(
        ["a", "b"],
        [[Proposal("x", -0.5)], [Proposal("y", -0.2)]],
        [[["y"]], [["x"]]],
        [[[-math.inf]], [[-math.inf]]],
    )
    assert (results[0].text, results[0].score) == ("y", 0.0)


def test_empty_crops_read_as_empty_text() -> None:
    results = Ensemble([ctc_member({"5": 0.6}), attention_member({"S": 0.9})])(
        [np.zeros((0, 5, 3), np.uint8)]
    )
    assert (results[0].text, results[0].score) == ("", 0.0)


def test_combine_checks_its_inputs() -> None:
    with pytest.raises(ValueError, match="different numbers of crops"):
        scoring_requests([[Proposal("x", 0.0)], []])
    with pytest.raises(ValueError, match="did not score"):
        combine(["a", "b"], [[Proposal("x", 0.0)], [Proposal("y", 0.0)]], [[[]], [[]]], [[[]], [[]]])
    with pytest.raises(ValueError, match="at least one member"):
        Ensemble([])
    with pytest.raises(ValueError, match="unique"):
        Ensemble([ctc_member({"5": 0.6}), ctc_member({"S": 0.6})])


class _AsyncWrapper:
    """A member seen through ``async`` methods, as the Serve ingress sees member deployments."""

    def __init__(self, member: Member) -> None:
        self.member = member
        self.name = member.name
        self.scored = 0

    async def propose(self, crops: Sequence[np.ndarray]) -> list[Proposal]:
        await asyncio.sleep(0)
        return self.member.propose(crops)

    async def score(
        self, crops: Sequence[np.ndarray], candidates: Sequence[Sequence[str]]
    ) -> list[list[float]]:
        self.scored += 1
        await asyncio.sleep(0)
        return self.member.score(crops, candidates)


def test_async_rounds_give_the_in_process_result() -> None:
    members = [ctc_member({"5": 0.6, "S": 0.38}), attention_member({"S": 0.9, "5": 0.08})]
    crops = [CROP, np.zeros((0, 3, 3), np.uint8), CROP]
    wrapped = [_AsyncWrapper(m) for m in members]
    assert asyncio.run(run_ensemble_async(wrapped, crops)) == run_ensemble(members, crops)
    assert [w.scored for w in wrapped] == [1, 1]
    # One member: no scoring round at all.
    single = [_AsyncWrapper(members[0])]
    assert [r.text for r in asyncio.run(run_ensemble_async(single, crops))] == ["CA5H", "", "CA5H"]
    assert single[0].scored == 0


def test_member_info_describes_the_model() -> None:
    info = attention_member({"S": 0.9}).info()
    assert info["decoding"] == "attention" and info["charset_size"] == len(CHARS) and info["name"] == "att"
    assert info["max_height"] is None and info["height"] == 32
    # The charset fingerprint tells whether members share a vocabulary, across CTC and attention.
    assert ctc_member({"5": 0.6}).info()["charset_sha1"] == info["charset_sha1"]
    assert ctc_member({"S": 0.6}, charset="ACHS").info()["charset_sha1"] != info["charset_sha1"]
