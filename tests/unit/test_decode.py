"""CTC and attention decoders, confidences and the ensemble's sequence scores."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ocrjobs.recognition.aster import AttentionRecognizer, State
from ocrjobs.recognition.decode import (
    attention_beam_search,
    attention_greedy_decode,
    attention_log_likelihood,
    attention_log_likelihood_from_logits,
    ctc_beam_search,
    ctc_greedy_decode,
    ctc_log_likelihood,
)
from ocrjobs.recognition.tokenizer import AttentionTokenizer, Charset, CTCTokenizer

CHARS = "abcdefghij"
CTC = CTCTokenizer(Charset(chars=CHARS))
ATT = AttentionTokenizer(Charset(chars=CHARS))


def _frames(*labels: int, classes: int = len(CHARS) + 1, sharpness: float = 20.0) -> torch.Tensor:
    """Logits ``[1, T, classes]`` that put nearly all mass on the given label per frame."""
    return F.one_hot(torch.tensor([labels]), classes).float() * sharpness


class MarkovModel(AttentionRecognizer):
    """An attention 'model' whose next-token distribution depends only on the previous token.

    ``table[prev]`` holds the next-token log-probabilities after token ``prev`` (BOS included), so
    decoders can be checked against hand-computed sequence probabilities.
    """

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table.log_softmax(dim=-1)

    @property
    def num_classes(self) -> int:
        return self.table.shape[1]

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images.new_zeros(images.shape[0], 1)

    def decode(self, memory: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.table[self.decoder_inputs(targets)]

    def init_state(self, memory: torch.Tensor) -> State:
        return (memory,)

    def step(self, state: State, tokens: torch.Tensor) -> tuple[torch.Tensor, State]:
        return self.table[tokens], state


def _trap_model() -> MarkovModel:
    """Greedy falls into 'a' repeated forever; the best sequence is 'b' then EOS.

    After BOS: a 0.55, b 0.45. After a: a 0.4, EOS 0.3, b 0.3. After b: EOS 1.0.
    """
    classes = len(CHARS) + 1
    probs = torch.zeros(classes + 2, classes)
    probs[:, 0] = 1.0  # every other context ends the sequence
    probs[classes] = 0.0
    probs[classes, 1], probs[classes, 2] = 0.55, 0.45  # after BOS
    probs[1, 1], probs[1, 0], probs[1, 2] = 0.4, 0.3, 0.3  # after 'a'
    return MarkovModel(probs.clamp_min(1e-12).log())


# ---------------------------------------------------------------- CTC greedy


def test_ctc_greedy_collapses_repeats_and_drops_blanks() -> None:
    logits = torch.cat([_frames(0, 1, 1, 0, 1, 2, 2, 0), _frames(3, 3, 3, 0, 0, 0, 0, 4)])
    hyps = ctc_greedy_decode(logits, CTC)
    assert [h.text for h in hyps] == ["aab", "cd"]
    assert hyps[0].ids == [1, 1, 2]
    assert all(len(h.char_scores) == len(h.text) for h in hyps)
    assert all(0.99 < s <= 1.0 for h in hyps for s in h.char_scores)


def test_ctc_greedy_all_blank_is_empty() -> None:
    hyp = ctc_greedy_decode(_frames(0, 0, 0, 0), CTC)[0]
    assert (hyp.text, hyp.ids, hyp.char_scores) == ("", [], [])
    assert 0.99 < hyp.score <= 1.0


def test_ctc_output_length_is_bounded_by_frames() -> None:
    labels = [1 + (t % 2) for t in range(12)]  # abab...: every frame emits
    hyp = ctc_greedy_decode(_frames(*labels), CTC)[0]
    assert hyp.text == "ab" * 6


def test_ctc_char_score_is_the_peak_of_its_run() -> None:
    probs = torch.tensor([[[0.1, 0.6, 0.3], [0.1, 0.8, 0.1], [0.7, 0.2, 0.1]]])
    hyp = ctc_greedy_decode(probs.log(), CTCTokenizer(Charset(chars="ab")))[0]
    assert hyp.text == "a"
    assert hyp.char_scores == pytest.approx([0.8])


def test_ctc_line_score_is_normalised_log_likelihood() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 16, len(CHARS) + 1) * 3
    hyps = ctc_greedy_decode(logits, CTC)
    targets, lengths = CTC.encode([h.text for h in hyps])
    expected = ctc_log_likelihood(logits, targets, lengths).exp()
    assert [h.score for h in hyps] == pytest.approx(expected.tolist(), rel=1e-5)


def test_ctc_log_likelihood_values() -> None:
    probs = torch.tensor([[[0.6, 0.4, 0.0], [0.6, 0.4, 0.0]]]).clamp_min(1e-12)
    # p("a") sums three alignments: a-, -a, aa = 0.24 + 0.24 + 0.16; normalised by len + 1 = 2.
    ll = ctc_log_likelihood(probs.log(), torch.tensor([[1]]), torch.tensor([1]))
    assert float(ll) == pytest.approx(math.log(0.64) / 2, rel=1e-4)
    empty = ctc_log_likelihood(probs.log(), torch.tensor([[0]]), torch.tensor([0]))
    assert float(empty) == pytest.approx(math.log(0.36), rel=1e-4)
    too_long = ctc_log_likelihood(probs.log(), torch.tensor([[1, 1]]), torch.tensor([2]))  # needs 3 frames
    assert float(too_long) == -math.inf


# ---------------------------------------------------------------- CTC beam


def test_ctc_beam_equals_greedy_on_peaked_outputs() -> None:
    torch.manual_seed(1)
    logits = torch.randn(4, 20, len(CHARS) + 1) * 10
    greedy = ctc_greedy_decode(logits, CTC)
    for width in (1, 5):
        beam = ctc_beam_search(logits, CTC, beam_width=width)
        assert [h.text for h in beam] == [h.text for h in greedy]
        assert [h.score for h in beam] == pytest.approx([h.score for h in greedy], rel=1e-5)
        for b, g in zip(beam, greedy, strict=True):
            assert b.char_scores == pytest.approx(g.char_scores, rel=1e-5)


def test_ctc_beam_sums_alignments_where_greedy_cannot() -> None:
    # Best single path is blank-blank (0.36), but "a" has total probability 0.64.
    logits = torch.tensor([[[0.6, 0.4, 0.0], [0.6, 0.4, 0.0]]]).clamp_min(1e-12).log()
    tok = CTCTokenizer(Charset(chars="ab"))
    assert ctc_greedy_decode(logits, tok)[0].text == ""
    best = ctc_beam_search(logits, tok, beam_width=3)[0]
    assert best.text == "a"
    assert best.score == pytest.approx(math.sqrt(0.64), rel=1e-4)
    assert best.char_scores == pytest.approx([0.4])


def test_confident_lines_keep_the_greedy_text_and_only_the_others_are_searched() -> None:
    tok = CTCTokenizer(Charset(chars="ab"))
    unsure = torch.tensor([[0.6, 0.4, 0.0], [0.6, 0.4, 0.0]])  # greedy "" (score 0.36), beam "a"
    peaked = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])  # "b"
    logits = torch.stack([peaked, unsure, peaked]).clamp_min(1e-12).log()
    searched = ctc_beam_search(logits, tok, beam_width=3)
    assert [h.text for h in searched] == ["b", "a", "b"]
    mixed = ctc_beam_search(logits, tok, beam_width=3, confident=0.9)
    assert [h.text for h in mixed] == ["b", "a", "b"]
    assert mixed[0] == ctc_greedy_decode(logits[:1], tok)[0]
    # A threshold above every line score searches them all; below every score, none.
    assert [h.text for h in ctc_beam_search(logits, tok, beam_width=3, confident=0.3)] == ["b", "", "b"]
    assert ctc_beam_search(logits, tok, beam_width=3, confident=1.0) == searched


def test_ctc_beam_all_blank_and_validation() -> None:
    assert ctc_beam_search(_frames(0, 0, 0), CTC, beam_width=4)[0].text == ""
    with pytest.raises(ValueError, match="beam_width"):
        ctc_beam_search(_frames(0), CTC, beam_width=0)


def test_ctc_decoders_accept_an_empty_batch() -> None:
    empty = torch.zeros(0, 5, len(CHARS) + 1)
    assert ctc_greedy_decode(empty, CTC) == []
    assert ctc_beam_search(empty, CTC) == []


# ---------------------------------------------------------------- attention


def test_attention_greedy_cuts_at_eos() -> None:
    logits = torch.cat([_frames(1, 2, 0, 3), _frames(0, 5, 5, 5), _frames(4, 4, 4, 4)])
    hyps = attention_greedy_decode(logits, ATT)
    assert [h.text for h in hyps] == ["ab", "", "dddd"]
    assert [len(h.char_scores) for h in hyps] == [2, 0, 4]
    assert all(0.99 < h.score <= 1.0 for h in hyps)


def test_attention_greedy_score_includes_eos_probability() -> None:
    probs = torch.tensor([[[0.2, 0.8, 0.0], [0.5, 0.25, 0.25]]]).clamp_min(1e-12)
    hyp = attention_greedy_decode(probs.log(), AttentionTokenizer(Charset(chars="ab")))[0]
    assert hyp.text == "a"
    assert hyp.char_scores == pytest.approx([0.8])
    assert hyp.score == pytest.approx(math.sqrt(0.8 * 0.5), rel=1e-5)


def test_generate_enforces_max_len_and_stops_when_all_ended() -> None:
    model = _trap_model()
    images = torch.zeros(2, 3, 8, 8)
    logits = model.generate(images, max_len=6)
    assert logits.shape == (2, 6, model.num_classes)
    hyp = attention_greedy_decode(logits, ATT)[0]
    assert hyp.text == "aaaaaa"  # never ended: cut at max_len
    with pytest.raises(ValueError, match="max_len"):
        model.generate(images, max_len=0)

    ending = torch.full((ATT.num_classes + 2, ATT.num_classes), -10.0)
    ending[:, 0] = 0.0  # EOS right away
    assert MarkovModel(ending).generate(images, max_len=6).shape[1] == 1


def test_attention_beam_width_one_equals_greedy() -> None:
    model = _trap_model()
    images = torch.zeros(1, 3, 8, 8)
    greedy = attention_greedy_decode(model.generate(images, max_len=5), ATT)[0]
    beam = attention_beam_search(model, images, ATT, beam_width=1, max_len=5)[0]
    assert (beam.text, beam.ids) == (greedy.text, greedy.ids) == ("aaaaa", [1] * 5)
    assert beam.score == pytest.approx(greedy.score, rel=1e-5)
    assert beam.char_scores == pytest.approx(greedy.char_scores, rel=1e-5)


def test_attention_beam_finds_the_better_sequence() -> None:
    model = _trap_model()
    hyp = attention_beam_search(model, torch.zeros(2, 3, 8, 8), ATT, beam_width=3, max_len=5)
    assert [h.text for h in hyp] == ["b", "b"]
    assert hyp[0].score == pytest.approx(math.sqrt(0.45), rel=1e-4)
    assert hyp[0].char_scores == pytest.approx([0.45], rel=1e-4)


def test_attention_beam_keeps_searching_while_a_live_beam_can_win() -> None:
    # Short unlikely texts ("e", "b", then junk) finish while "acdf" is still live; the search must not
    # stop on the number of finished hypotheses alone.
    classes = len(CHARS) + 1
    a, b, c, d, e, f, g = range(1, 8)
    probs = torch.zeros(classes + 2, classes)
    probs[:, 0] = 1.0  # every other context ends the sequence
    probs[[classes, a, b, c, d]] = 0.0
    probs[classes, a], probs[classes, b], probs[classes, e] = 0.5, 0.3, 0.2  # after BOS
    probs[a, c] = probs[c, d] = probs[d, f] = 1.0
    probs[b, 0], probs[b, g] = 0.6, 0.4
    probs[:, 0] = probs[:, 0].clamp_min(1e-9)  # among unlikely tokens EOS comes first: more finish early
    model = MarkovModel(probs.clamp_min(1e-12).log())
    hyp = attention_beam_search(model, torch.zeros(1, 3, 8, 8), ATT, beam_width=3, max_len=8)[0]
    assert hyp.text == "acdf"
    assert hyp.score == pytest.approx(0.5 ** (1 / 5), rel=1e-4)


def test_attention_beam_on_a_trained_like_model_matches_greedy_and_validates() -> None:
    torch.manual_seed(0)
    model = MarkovModel(torch.randn(ATT.num_classes + 2, ATT.num_classes) * 8)
    images = torch.zeros(3, 3, 8, 8)
    greedy = attention_greedy_decode(model.generate(images, max_len=10), ATT)
    beam = attention_beam_search(model, images, ATT, beam_width=1, max_len=10)
    assert [h.text for h in beam] == [h.text for h in greedy]
    with pytest.raises(ValueError, match="beam_width"):
        attention_beam_search(model, images, ATT, beam_width=0)


def test_attention_log_likelihood_ignores_padding() -> None:
    model = _trap_model()
    targets, _ = ATT.encode(["b", "aa"])  # [[2, 0, PAD], [1, 1, 0]]
    ll = attention_log_likelihood(model, torch.zeros(2, 3, 8, 8), targets)
    assert ll[0].item() == pytest.approx(math.log(0.45) / 2, rel=1e-4)
    assert ll[1].item() == pytest.approx(math.log(0.55 * 0.4 * 0.3) / 3, rel=1e-4)
    logits = model(torch.zeros(2, 3, 8, 8), targets)
    assert torch.allclose(attention_log_likelihood_from_logits(logits, targets), ll)


def test_greedy_confidence_equals_scoring_of_its_own_output() -> None:
    torch.manual_seed(2)
    table = torch.randn(ATT.num_classes + 2, ATT.num_classes) * 4
    table[:, 0] += 2.0  # make EOS likely enough that sequences end
    model = MarkovModel(table)
    images = torch.zeros(2, 3, 8, 8)
    hyps = attention_greedy_decode(model.generate(images, max_len=20), ATT)
    targets, _ = ATT.encode([h.text for h in hyps])
    ended = [h for h in hyps if len(h.ids) < 20]
    assert ended, "the random table should end at least one sequence"
    ll = attention_log_likelihood(model, images, targets).exp().tolist()
    for h, score in zip(hyps, ll, strict=True):
        if h in ended:
            assert h.score == pytest.approx(score, rel=1e-5)


def test_attention_beam_max_repeat_breaks_a_loop() -> None:
    # After BOS or 'a': a 0.5, b 0.3, EOS 0.2 ('a' forever is the greedy reading); after 'b': EOS.
    classes = len(CHARS) + 1
    probs = torch.zeros(classes + 2, classes)
    probs[:, 0] = 1.0
    probs[[classes, 1]] = 0.0
    probs[[classes, 1], 1], probs[[classes, 1], 2], probs[[classes, 1], 0] = 0.5, 0.3, 0.2
    model = MarkovModel(probs.clamp_min(1e-12).log())
    images = torch.zeros(2, 3, 8, 8)
    assert attention_beam_search(model, images, ATT, beam_width=1, max_len=8)[0].text == "a" * 8
    capped = attention_beam_search(model, images, ATT, beam_width=1, max_len=8, max_repeat=3)
    assert [h.text for h in capped] == ["aaab", "aaab"]
    assert capped[0].char_scores == pytest.approx([0.5, 0.5, 0.5, 0.3], rel=1e-4)
    # A wider beam compares the way out with the other readings: "b" (mean log p of 0.3, 1) wins.
    assert attention_beam_search(model, images, ATT, beam_width=3, max_len=8, max_repeat=1)[0].text == "b"
    with pytest.raises(ValueError, match="max_repeat"):
        attention_beam_search(model, images, ATT, max_repeat=0)
