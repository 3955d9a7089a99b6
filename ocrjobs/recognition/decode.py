"""Logits to text: CTC and attention decoders, and the sequence scores the ensemble ranks with.

Every decoder returns one :class:`Hypothesis` per sample: the label ids, the text, a confidence per
character and a line confidence, defined the same way everywhere:

* **line confidence** ``score = exp(log p(text | image) / (len(text) + 1))``, the geometric-mean
  probability per output token, where the ``+ 1`` stands for the end of the sequence (the EOS token
  of attention models; for CTC it also keeps an empty output defined). For CTC, ``p(text | image)``
  sums over all alignments (the CTC forward algorithm); for attention models it is the product of the
  chosen tokens' probabilities, EOS included. An attention output cut at ``max_len`` without EOS is
  normalised by its own length. ``log(score)`` is exactly what :func:`ctc_log_likelihood` and
  :func:`attention_log_likelihood` return for that text, so proposals and ensemble scores compare.
* **character confidence**: for CTC, the peak probability of that character over the frames its most
  probable alignment gives it; for attention models, the probability of that token at its step.

Conventions (see ``tokenizer.py``): class 0 is the CTC blank or the attention EOS; target ids
``>= num_classes`` are padding.

>>> from ocrjobs.recognition.tokenizer import Charset, CTCTokenizer
>>> tok = CTCTokenizer(Charset(chars="ab"))
>>> frames = torch.tensor([[0, 1, 1, 0, 2, 0, 2]])  # blank a a blank b blank b
>>> logits = F.one_hot(frames, 3).float() * 20
>>> ctc_greedy_decode(logits, tok)[0].text
'abb'
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ocrjobs.recognition.aster import AttentionRecognizer
from ocrjobs.recognition.lm import CharNgramLM
from ocrjobs.recognition.tokenizer import Tokenizer

__all__ = [
    "Hypothesis",
    "attention_beam_search",
    "attention_greedy_decode",
    "attention_log_likelihood",
    "attention_log_likelihood_from_logits",
    "ctc_beam_search",
    "ctc_greedy_decode",
    "ctc_log_likelihood",
]

_BLANK = 0
# Beam search frames where blank is at least this probable only extend beams by blank (and the repeat
# of a beam's last label): no label is tried. CTC outputs are mostly such frames.
_BLANK_SKIP = math.log(0.999)
# Labels less probable than this on a frame are not tried as extensions there. With shallow fusion a
# language model would have to favour such a label by more than log(1000) / lm_weight (23 nats at the
# shipped weight 0.3) over the acoustically likely ones for it to win, which a character n-gram never
# does; the search then tries one or two labels on most frames instead of beam_width.
_LABEL_MIN = math.log(0.001)
_EOS = 0


@dataclass(frozen=True)
class Hypothesis:
    """One decoded sequence.

    Attributes:
        ids: predicted class ids of the characters (no blank, EOS or padding).
        text: ``tokenizer.decode(ids)``.
        char_scores: one confidence in ``[0, 1]`` per id (see the module docstring).
        score: line confidence in ``[0, 1]`` (see the module docstring).
        frames: CTC decoders: the first and last frame of each character on its most probable
            alignment (the best path for greedy decoding, the Viterbi alignment of the text for beam
            search); ``None`` from attention decoders. Word boxes come from these.
    """

    ids: list[int]
    text: str
    char_scores: list[float]
    score: float
    frames: list[tuple[int, int]] | None = None


# ---------------------------------------------------------------- sequence scores


def ctc_log_likelihood(logits: torch.Tensor, targets: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Length-normalised CTC log-likelihood of given label sequences.

    Args:
        logits: ``[b, T, num_classes]`` CTC logits (every frame is valid).
        targets: ``[b, S]`` padded label ids (``CTCTokenizer.encode``), ``S >= 1``.
        lengths: ``[b]`` label lengths.

    Returns:
        ``[b]`` float32: ``log p(target | image) / (length + 1)``; ``-inf`` for a label that no
        alignment over ``T`` frames can produce.
    """
    if logits.shape[0] == 0:  # F.ctc_loss rejects an empty batch
        return logits.new_zeros(0, dtype=torch.float32)
    log_probs = logits.float().log_softmax(dim=-1).transpose(0, 1)  # [b, T, C] -> [T, b, C]
    frames = torch.full((logits.shape[0],), logits.shape[1], dtype=torch.long, device=logits.device)
    nll = F.ctc_loss(log_probs, targets, frames, lengths, blank=_BLANK, reduction="none", zero_infinity=False)
    return -nll / (lengths.to(nll.device).float() + 1.0)


def attention_log_likelihood_from_logits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Length-normalised log-likelihood of targets under teacher-forced logits.

    Args:
        logits: ``[b, L, num_classes]`` from ``model(images, targets)`` or ``model.decode``.
        targets: ``[b, L]`` from ``AttentionTokenizer.encode`` (characters, EOS, PAD).

    Returns:
        ``[b]`` float32: the mean log-probability of the target tokens, EOS included, PAD excluded.
    """
    num_classes = logits.shape[-1]
    valid = targets < num_classes
    log_probs = logits.float().log_softmax(dim=-1)
    picked = log_probs.gather(-1, targets.clamp(max=num_classes - 1).unsqueeze(-1)).squeeze(-1)  # [b, L]
    return (picked * valid).sum(dim=1) / valid.sum(dim=1).clamp_min(1)


def attention_log_likelihood(
    model: AttentionRecognizer, images: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Teacher-forced, length-normalised log-likelihood of targets under an attention model.

    Args:
        model: an autoregressive recogniser (ASTER, SATRN).
        images: ``[b, c, h, w]`` normalised images.
        targets: ``[b, L]`` from ``AttentionTokenizer.encode``.

    Returns:
        ``[b]`` float32 mean log-probability per target token (EOS included).
    """
    return attention_log_likelihood_from_logits(model(images, targets), targets)


# ---------------------------------------------------------------- CTC


def ctc_greedy_decode(logits: torch.Tensor, tokenizer: Tokenizer) -> list[Hypothesis]:
    """Best-path CTC decoding of a batch: argmax per frame, collapse repeats, drop blanks.

    All frame-level work is batched tensor ops; Python only loops over samples to build the results.

    Args:
        logits: ``[b, T, num_classes]`` CTC logits.
        tokenizer: maps label ids to text.

    Returns:
        One :class:`Hypothesis` per sample (empty text when every frame is blank).
    """
    b, t, _ = logits.shape
    probs = logits.float().softmax(dim=-1)
    peak, best = probs.max(dim=-1)  # [b, T]
    previous = F.pad(best[:, :-1], (1, 0), value=-1)
    run_start = best != previous  # [b, T]: a frame that starts a run of equal labels
    run_id = run_start.long().cumsum(dim=1) - 1  # [b, T]: index of the run each frame belongs to
    run_peak = torch.zeros_like(peak).scatter_reduce(1, run_id, peak, reduce="amax", include_self=False)
    emit = run_start & (best != _BLANK)  # [b, T]: one frame per output character
    lengths = emit.sum(dim=1)
    char_peak = run_peak.gather(1, run_id)[emit]  # [n_chars] in sample order
    # Each character's frames: its run, from the emitting frame to the run's last frame.
    run_len = torch.zeros_like(run_id).scatter_add(1, run_id, torch.ones_like(run_id))
    first = torch.arange(t, device=logits.device).expand(b, t)[emit]
    last = first + run_len.gather(1, run_id)[emit] - 1
    split_frames = torch.split(torch.stack([first, last], dim=1), lengths.tolist())
    targets = torch.zeros(b, max([1, *lengths.tolist()]), dtype=torch.long, device=logits.device)
    rows = torch.arange(b, device=logits.device).unsqueeze(1).expand(b, t)
    slots = emit.long().cumsum(dim=1) - 1
    targets[rows[emit], slots[emit]] = best[emit]
    scores = ctc_log_likelihood(logits, targets, lengths).exp()
    out: list[Hypothesis] = []
    split_scores = torch.split(char_peak, lengths.tolist())
    for i in range(b):
        ids = targets[i, : int(lengths[i])].tolist()
        frames = [(int(a), int(z)) for a, z in split_frames[i].tolist()]
        out.append(Hypothesis(ids, tokenizer.decode(ids), split_scores[i].tolist(), float(scores[i]), frames))
    return out


def _logaddexp(a: float, b: float) -> float:
    # Scalar log(exp(a) + exp(b)) on Python floats: several times faster than np.logaddexp here.
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    return max(a, b) + math.log1p(math.exp(-abs(a - b)))


def _prefix_beam_search(
    log_probs: np.ndarray, beam_width: int, fusion: _Fusion | None = None
) -> tuple[int, ...]:
    """The most probable label sequence of one sample's ``[T, C]`` log-probabilities.

    Each prefix keeps two log-probabilities: of its alignments ending in a blank and ending in its
    last label (needed because a repeated label only extends a prefix after a blank). Only the
    ``beam_width`` most probable labels of a frame with probability 0.001 or more are tried as
    extensions, and none on frames where blank has probability 0.999 or more. With ``fusion`` prefixes are ranked by that sum plus the
    weighted language-model log-probability of their text and a bonus per character; the final choice
    adds the language model's end-of-line probability.
    """
    beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, -math.inf)}
    n_ext = min(beam_width, log_probs.shape[1] - 1)
    top_labels = np.argsort(-log_probs[:, 1:], axis=1)[:, :n_ext] + 1  # [T, n_ext]
    top_kept = np.take_along_axis(log_probs, top_labels, axis=1) >= _LABEL_MIN
    rank: Callable[[tuple[int, ...], float], float] = (
        (lambda prefix, acoustic: acoustic) if fusion is None else fusion.rank
    )
    for frame_array, top, kept in zip(log_probs, top_labels, top_kept, strict=True):
        frame = frame_array.tolist()
        if frame[_BLANK] >= _BLANK_SKIP:
            beams = {
                prefix: (
                    _logaddexp(p_blank, p_label) + frame[_BLANK],
                    p_label + frame[prefix[-1]] if prefix else -math.inf,
                )
                for prefix, (p_blank, p_label) in beams.items()
            }
            continue
        labels = top[kept].tolist()
        nxt: defaultdict[tuple[int, ...], list[float]] = defaultdict(lambda: [-math.inf, -math.inf])
        for prefix, (p_blank, p_label) in beams.items():
            total = _logaddexp(p_blank, p_label)
            entry = nxt[prefix]
            entry[0] = _logaddexp(entry[0], total + frame[_BLANK])
            if prefix:
                # The last label repeated without a blank in between stays the same prefix.
                entry[1] = _logaddexp(entry[1], p_label + frame[prefix[-1]])
            for label in labels:
                extended = nxt[(*prefix, label)]
                # After the same label, only alignments that passed through a blank start a new one.
                source = p_blank if prefix and prefix[-1] == label else total
                extended[1] = _logaddexp(extended[1], source + frame[label])
        ranked = sorted(nxt.items(), key=lambda kv: rank(kv[0], _logaddexp(*kv[1])), reverse=True)
        beams = {prefix: (pb, pl) for prefix, (pb, pl) in ranked[:beam_width]}
    if fusion is None:
        return max(beams, key=lambda prefix: _logaddexp(*beams[prefix]))
    return max(beams, key=lambda prefix: fusion.final(prefix, _logaddexp(*beams[prefix])))


class _Fusion:
    """Shallow fusion of a character language model into one sample's prefix beam search."""

    def __init__(self, lm: CharNgramLM, chars: Sequence[str], weight: float, length_bonus: float) -> None:
        self.lm, self.chars, self.weight, self.length_bonus = lm, chars, weight, length_bonus
        # Prefix -> (LM state, weighted LM score + length bonus): each extension is scored once per sample.
        self._known: dict[tuple[int, ...], tuple[str, float]] = {(): (lm.initial_state(), 0.0)}

    def _state_score(self, prefix: tuple[int, ...]) -> tuple[str, float]:
        known = self._known.get(prefix)
        if known is None:
            state, score = self._state_score(prefix[:-1])
            state, log_prob = self.lm.step(state, self.chars[prefix[-1]])
            known = (state, score + self.weight * log_prob + self.length_bonus)
            self._known[prefix] = known
        return known

    def rank(self, prefix: tuple[int, ...], acoustic: float) -> float:
        return acoustic + self._state_score(prefix)[1]

    def final(self, prefix: tuple[int, ...], acoustic: float) -> float:
        state, score = self._state_score(prefix)
        return acoustic + score + self.weight * self.lm.end_step(state)


def _ctc_alignment(
    log_probs: np.ndarray, ids: Sequence[int]
) -> tuple[list[float], list[tuple[int, int]] | None]:
    """Per-character peak probability and first/last frame along the most probable (Viterbi)
    alignment of ``ids`` (frames ``None`` when ``ids`` cannot be aligned in the frames)."""
    if not ids:
        return [], []
    n_frames = log_probs.shape[0]
    states = np.zeros(2 * len(ids) + 1, dtype=np.int64)  # blank, id0, blank, id1, ..., blank
    states[1::2] = ids
    n = len(states)
    skip = np.zeros(n, dtype=bool)  # may jump over the blank before it (labels differ)
    skip[3::2] = states[3::2] != states[1:-2:2]
    emit = log_probs[:, states]  # [T, S]
    dp = np.full(n, -np.inf)
    dp[:2] = emit[0, :2]
    back = np.zeros((n_frames, n), dtype=np.int64)
    # choices[k, s]: the score of reaching state s from s - k (stay, step, jump over a blank); rows 1
    # and 2 keep -inf where no such move exists. One buffer for all frames: this loop runs per line.
    choices = np.full((3, n), -np.inf)
    no_jump = ~skip[2:]
    for t in range(1, n_frames):
        choices[0] = dp
        choices[1, 1:] = dp[:-1]
        choices[2, 2:] = dp[:-2]
        choices[2, 2:][no_jump] = -np.inf
        back[t] = choices.argmax(axis=0)
        dp = choices.max(axis=0) + emit[t]
    end = n - 1 if n == 1 or dp[n - 1] >= dp[n - 2] else n - 2
    if not np.isfinite(dp[end]):
        return [0.0] * len(ids), None
    scores = np.zeros(len(ids))
    frames = [[n_frames, -1] for _ in ids]
    state = end
    for t in range(n_frames - 1, -1, -1):
        if state % 2 == 1:
            k = state // 2
            scores[k] = max(scores[k], math.exp(emit[t, state]))
            frames[k][0] = min(frames[k][0], t)
            frames[k][1] = max(frames[k][1], t)
        state -= back[t, state]
    return scores.tolist(), [(a, z) for a, z in frames]


def ctc_beam_search(
    logits: torch.Tensor,
    tokenizer: Tokenizer,
    beam_width: int = 5,
    lm: CharNgramLM | None = None,
    lm_weight: float = 0.5,
    length_bonus: float = 0.0,
    confident: float | None = None,
) -> list[Hypothesis]:
    """CTC prefix beam search, one sample at a time, optionally fused with a character language model.

    Unlike greedy decoding it sums the probabilities of all alignments of a prefix, so it can prefer a
    text that no single best frame sequence spells. On peaked outputs, and with ``beam_width=1``
    whenever the best alignment dominates, it returns the greedy text. With ``lm`` a prefix ranks by
    ``log p_ctc + lm_weight * log p_lm + length_bonus * length`` (shallow fusion; the bonus offsets the
    language model's cost per character). Scores stay the recogniser's own likelihood of the text.

    Args:
        logits: ``[b, T, num_classes]`` CTC logits.
        tokenizer: maps label ids to text.
        beam_width: prefixes kept per frame (and labels tried per frame).
        lm: a character language model over the tokenizer's charset, or None.
        lm_weight: weight of the language model's log-probability.
        length_bonus: added per character of a prefix.
        confident: samples whose greedy text (:func:`ctc_greedy_decode`) has at least this line score
            (its length-normalised likelihood) keep it: there the beam and a language model almost never change the
            text, and the search (a Python loop per frame) then runs only on the uncertain lines.
            ``None``: every sample is searched.

    Returns:
        One :class:`Hypothesis` per sample.

    Raises:
        ValueError: ``beam_width < 1`` or a negative ``lm_weight``.
    """
    if beam_width < 1:
        raise ValueError(f"beam_width must be >= 1, got {beam_width}")
    if lm_weight < 0:
        raise ValueError(f"lm_weight must be >= 0, got {lm_weight}")
    if confident is not None and len(logits):
        greedy = ctc_greedy_decode(logits, tokenizer)
        unsure = [i for i, hyp in enumerate(greedy) if hyp.score < confident]
        if len(unsure) < len(greedy):
            searched = ctc_beam_search(logits[unsure], tokenizer, beam_width, lm, lm_weight, length_bonus)
            for i, hyp in zip(unsure, searched, strict=True):
                greedy[i] = hyp
            return greedy
    log_probs = logits.float().log_softmax(dim=-1)
    lp = log_probs.detach().cpu().numpy()
    chars = [""] + [tokenizer.decode([i]) for i in range(1, lp.shape[-1])] if lm is not None else []
    best = [
        _prefix_beam_search(
            sample, beam_width, None if lm is None else _Fusion(lm, chars, lm_weight, length_bonus)
        )
        for sample in lp
    ]
    lengths = torch.tensor([len(ids) for ids in best], dtype=torch.long)
    targets = torch.zeros(len(best), max([1, *lengths.tolist()]), dtype=torch.long)
    for i, ids in enumerate(best):
        targets[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    scores = ctc_log_likelihood(logits, targets.to(logits.device), lengths.to(logits.device)).exp().tolist()
    out = []
    for ids, sample, score in zip(best, lp, scores, strict=True):
        char_scores, frames = _ctc_alignment(sample, ids)
        out.append(Hypothesis(list(ids), tokenizer.decode(list(ids)), char_scores, score, frames))
    return out


# ---------------------------------------------------------------- attention


def attention_greedy_decode(logits: torch.Tensor, tokenizer: Tokenizer) -> list[Hypothesis]:
    """Decode greedy autoregressive logits (``model.generate``) for a batch: cut at the first EOS.

    Args:
        logits: ``[b, t, num_classes]`` generated logits (``t`` is the length limit that was used).
        tokenizer: maps ids to text.

    Returns:
        One :class:`Hypothesis` per sample; a sample without EOS keeps all ``t`` tokens.
    """
    b, t, _ = logits.shape
    log_probs = logits.float().log_softmax(dim=-1)
    best_lp, best = log_probs.max(dim=-1)  # [b, t]
    is_eos = best == _EOS
    n_chars = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1), t)  # [b]
    steps = torch.arange(t, device=logits.device).unsqueeze(0)
    scored = steps <= n_chars.unsqueeze(1)  # characters, then the EOS if it was emitted
    mean_lp = (best_lp * scored).sum(dim=1) / scored.sum(dim=1)
    scores = mean_lp.exp().tolist()
    ids_all, probs_all, lengths = best.tolist(), best_lp.exp().tolist(), n_chars.tolist()
    out: list[Hypothesis] = []
    for i in range(b):
        ids = ids_all[i][: lengths[i]]
        out.append(Hypothesis(ids, tokenizer.decode(ids), probs_all[i][: lengths[i]], scores[i]))
    return out


@dataclass
class _Beam:
    ids: list[int]
    log_prob: float
    token_log_probs: list[float]

    def normalized(self) -> float:
        return self.log_prob / max(1, len(self.token_log_probs))


def attention_beam_search(
    model: AttentionRecognizer,
    images: torch.Tensor,
    tokenizer: Tokenizer,
    beam_width: int = 5,
    max_len: int = 32,
    max_repeat: int | None = None,
) -> list[Hypothesis]:
    """Beam search over an attention model, every image of the batch searched at once.

    For each image, each step expands the live beams by every class and keeps the ``beam_width`` best
    by summed log-probability; an expansion by EOS among them is set aside as finished. An image's
    search ends when no beam is live, when no live beam could beat the best finished one even by ending
    at the next step (the usual heuristic for length-normalised scores), or after ``max_len`` steps. The
    finished hypothesis with the best mean log-probability per token wins (live ones only when none
    finished). With ``beam_width=1`` this is greedy decoding.

    The images' searches are independent (each reads as it would alone, up to the order of exactly tied
    candidates, which ``topk`` does not fix), but their beams go through the decoder together:
    ``beam_width`` rows per image (rows no beam holds are padding with a score of -inf), and an image
    leaves the batch when its search ends, so a step costs what the images still decoding need. One decoder step for 32 rows costs ~3.4x one for 4 on a CPU core, not 8x.

    ``max_repeat`` forbids a beam to write any token more than that many times in a row. An attention
    decoder that loses its place in a wide blank (``\\hspace``, ``\\qquad``) can repeat a space token
    until ``max_len``, turning one missed gap into a hundred wrong tokens and dropping the rest of the
    formula; forbidding the next repeat makes it choose its second-best token, which is usually the
    way back into the formula.

    Args:
        model: an autoregressive recogniser.
        images: ``[b, c, h, w]`` normalised images.
        tokenizer: maps ids to text.
        beam_width: hypotheses kept per step and image.
        max_len: most decoding steps (EOS included).
        max_repeat: most consecutive copies of one token (``None``: no limit).

    Returns:
        One :class:`Hypothesis` per sample.

    Raises:
        ValueError: ``beam_width``, ``max_len`` or ``max_repeat`` below 1.
    """
    if beam_width < 1 or max_len < 1 or (max_repeat is not None and max_repeat < 1):
        raise ValueError(
            f"beam_width, max_len and max_repeat must be >= 1, got {beam_width}, {max_len} and {max_repeat}"
        )
    n, k, device = images.shape[0], beam_width, images.device
    if n == 0:
        return []
    state = model.init_beam_state(model.encode(images), k)
    live: list[list[_Beam]] = [[_Beam([], 0.0, [])] for _ in range(n)]  # per image, at most k
    finished: list[list[_Beam]] = [[] for _ in range(n)]
    active = list(range(n))  # the images still searching, in the order of the state's row groups
    tokens = torch.full((n * k,), model.bos_id, dtype=torch.long, device=device)
    for _ in range(max_len):
        logits, state = model.step(state, tokens)
        log_probs = logits.float().log_softmax(dim=-1).view(len(active), k, -1)  # [images, k, C]
        num_classes = log_probs.shape[2]
        if max_repeat is not None:
            for g, image in enumerate(active):
                for r, beam in enumerate(live[image]):
                    tail = beam.ids[-max_repeat:]
                    if len(tail) == max_repeat and len(set(tail)) == 1:
                        log_probs[g, r, tail[0]] = -math.inf
        scores = torch.tensor(
            [
                [beam.log_prob for beam in live[image]] + [-math.inf] * (k - len(live[image]))
                for image in active
            ],
            device=device,
        )
        totals = (log_probs + scores[:, :, None]).view(len(active), k * num_classes)
        top = totals.topk(min(k, totals.shape[1]), dim=1)
        top_values, top_indices = top.values.tolist(), top.indices.tolist()
        kept: list[int] = []  # groups (indices into active) still searching after this step
        rows: list[int] = []
        next_tokens: list[int] = []
        for g, image in enumerate(active):
            next_live: list[_Beam] = []
            parents: list[int] = []
            for value, index in zip(top_values[g], top_indices[g], strict=True):
                if value == -math.inf:  # only padding rows (or forbidden repeats) are left
                    break
                r, token = divmod(index, num_classes)
                parent = live[image][r]
                token_lp = [*parent.token_log_probs, float(log_probs[g, r, token])]
                if token == _EOS:
                    finished[image].append(_Beam(parent.ids, value, token_lp))
                else:
                    next_live.append(_Beam([*parent.ids, token], value, token_lp))
                    parents.append(g * k + r)
            done = not next_live
            if not done and finished[image]:
                # Stop once no live beam would beat the best finished one even by ending next step
                # with probability 1 (the usual length-normalised heuristic, as in HF generate).
                best_done = max(beam.normalized() for beam in finished[image])
                done = all(beam.log_prob / (len(beam.token_log_probs) + 1) <= best_done for beam in next_live)
            if done:
                continue
            live[image] = next_live
            kept.append(g)
            # Padding rows repeat one of the image's rows (a row never leaves its image's group).
            rows += parents + [g * k] * (k - len(next_live))
            next_tokens += [beam.ids[-1] for beam in next_live] + [_EOS] * (k - len(next_live))
        if not kept:
            break
        groups = torch.tensor(kept, dtype=torch.long, device=device) if len(kept) < len(active) else None
        state = model.reorder_state(state, torch.tensor(rows, dtype=torch.long, device=device), groups)
        tokens = torch.tensor(next_tokens, dtype=torch.long, device=device)
        active = [active[g] for g in kept]
    out: list[Hypothesis] = []
    for image in range(n):
        best = max(finished[image] or live[image], key=_Beam.normalized)
        char_scores = [math.exp(lp) for lp in best.token_log_probs[: len(best.ids)]]
        out.append(Hypothesis(best.ids, tokenizer.decode(best.ids), char_scores, math.exp(best.normalized())))
    return out
