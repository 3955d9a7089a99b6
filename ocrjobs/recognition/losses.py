"""Training losses for recognisers; they live beside the models, not inside them.

Formula recognisers (image -> LaTeX) add the seed recipe's bracket penalty: :func:`bracket_penalty` is
the fraction of bracket tokens of a decoded formula that are left unmatched, and :func:`formula_loss`
uses it as a per-sample weight on the cross-entropy (see there for exactly how it reaches the gradient).

>>> logits = torch.zeros(2, 3, 5)  # uniform over 5 classes
>>> targets = torch.tensor([[1, 0, 6], [2, 3, 0]])  # 6 is PAD (num_classes + 1): not scored
>>> f"{attention_loss(logits, targets):.4f}"  # log(5)
'1.6094'
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "BRACKETS",
    "attention_loss",
    "bracket_penalty",
    "case_pairs",
    "ctc_loss",
    "fold_case",
    "formula_loss",
]

# Bracket token -> (kind, opens). A closing token matches the innermost open token of the same kind;
# ``\{`` and ``\lbrace`` are the same delimiter in LaTeX, so they share a kind. ``\left<d>``/``\right<d>``
# and ``\begin{env}``/``\end{env}`` are recognised by prefix in ``_bracket_role``.
BRACKETS: dict[str, tuple[str, bool]] = {
    "{": ("brace", True),
    "}": ("brace", False),
    "(": ("paren", True),
    ")": ("paren", False),
    "[": ("bracket", True),
    "]": ("bracket", False),
    "\\{": ("literal_brace", True),
    "\\}": ("literal_brace", False),
    "\\lbrace": ("literal_brace", True),
    "\\rbrace": ("literal_brace", False),
    "\\lbrack": ("literal_bracket", True),
    "\\rbrack": ("literal_bracket", False),
    "\\langle": ("angle", True),
    "\\rangle": ("angle", False),
    "\\lfloor": ("floor", True),
    "\\rfloor": ("floor", False),
    "\\lceil": ("ceil", True),
    "\\rceil": ("ceil", False),
}
r"""Bracket tokens of im2latex-style formulas other than ``\left``/``\right`` and environments."""


def case_pairs(chars: str) -> torch.Tensor:
    """``[P, 2]`` class ids ``(upper, lower)`` of the letters whose two cases are both in ``chars``.

    Ids follow both tokenizers' convention: ``chars[i]`` is id ``i + 1``.

    >>> case_pairs("aAb1B").tolist()
    [[2, 1], [5, 3]]
    """
    index = {ch: i + 1 for i, ch in enumerate(chars)}
    pairs = [
        (index[ch.upper()], index[ch])
        for ch in chars
        if ch.islower() and len(ch.upper()) == 1 and ch.upper() in index
    ]
    return torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)


def fold_case(
    log_probs: torch.Tensor, targets: torch.Tensor, anycase: torch.Tensor, pairs: torch.Tensor, batch_dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Case-insensitive supervision: for the rows marked ``anycase`` a letter's label accepts either case.

    For those rows the upper-case class's log-probability becomes ``log(p(upper) + p(lower))``, the
    lower-case class's becomes ``-inf`` (each frame still sums to one) and their labels are mapped to the
    upper-case id, so the likelihood of a label is the summed probability of
    both spellings: a source transcribed in capitals whatever the print (SROIE) teaches the letters
    without teaching that all text is upper case. Other rows are unchanged.

    Args:
        log_probs: ``[..., C]`` log-probabilities with the batch at ``batch_dim``.
        targets: ``[b, S]`` label ids (ids ``>= C``, e.g. PAD, are kept as they are).
        anycase: ``[b]`` bool, the rows to fold.
        pairs: ``[P, 2]`` from :func:`case_pairs`.
        batch_dim: where the batch is in ``log_probs`` (1 for CTC's ``[T, b, C]``, 0 for ``[b, L, C]``).

    Returns:
        ``(log_probs, targets)``, new tensors.
    """
    if pairs.numel() == 0 or not bool(anycase.any()):
        return log_probs, targets
    pairs = pairs.to(log_probs.device)
    upper, lower = pairs[:, 0], pairs[:, 1]
    merged = torch.logaddexp(log_probs[..., upper], log_probs[..., lower])
    shape = [1] * log_probs.dim()
    shape[batch_dim] = -1
    rows = anycase.to(log_probs.device).view(shape)
    folded = log_probs.clone()
    folded[..., upper] = torch.where(rows, merged, log_probs[..., upper])
    # The lower-case class gets probability 0 in folded rows, so each frame still sums to one. That is
    # not cosmetic: PyTorch's CTC backward assumes normalised log-probabilities (its gradient carries an
    # exp(log_prob) term that the log-softmax backward cancels only then); with both columns kept the
    # gradient is wrong and training settles on p(upper) = 2 p(lower) instead of learning the case.
    folded[..., lower] = torch.where(rows, torch.full_like(merged, float("-inf")), log_probs[..., lower])
    table = torch.arange(max(int(targets.max()) + 1, log_probs.shape[-1]), device=targets.device)
    table[lower.to(targets.device)] = upper.to(targets.device)
    targets = torch.where(anycase.to(targets.device).view(-1, 1), table[targets], targets)
    return folded, targets


def ctc_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    lengths: torch.Tensor,
    anycase: torch.Tensor | None = None,
    pairs: torch.Tensor | None = None,
) -> torch.Tensor:
    """CTC loss (blank = 0) of per-frame logits, averaged over the batch.

    Each sample's negative log-likelihood is divided by its label length (at least 1) before the
    batch mean, as ``F.ctc_loss(reduction="mean")`` does. A label that cannot fit in the frames (longer
    than ``T`` counting the blanks its repeats need) contributes zero instead of ``inf``, so one bad
    label cannot wreck a run; the data pipeline should filter such labels.

    Args:
        logits: ``[b, T, num_classes]`` model output (every frame is valid).
        targets: ``[b, S]`` padded label ids from ``CTCTokenizer.encode``.
        lengths: ``[b]`` label lengths.
        anycase: ``[b]`` bool, rows whose letters are scored case-insensitively (:func:`fold_case`).
        pairs: the charset's :func:`case_pairs` (needed with ``anycase``).

    Returns:
        The scalar loss (float32, also under autocast).
    """
    log_probs = logits.float().log_softmax(dim=-1).transpose(0, 1)  # [b, T, C] -> [T, b, C]
    if anycase is not None and pairs is not None:
        log_probs, targets = fold_case(log_probs, targets, anycase, pairs, batch_dim=1)
    frames = torch.full((logits.shape[0],), logits.shape[1], dtype=torch.long, device=logits.device)
    return F.ctc_loss(log_probs, targets, frames, lengths, blank=0, reduction="mean", zero_infinity=True)


def attention_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    label_smoothing: float = 0.0,
    anycase: torch.Tensor | None = None,
    pairs: torch.Tensor | None = None,
) -> torch.Tensor:
    """Token cross-entropy of teacher-forced logits, padding ignored.

    Target ids ``>= num_classes`` (the tokenizer's PAD) are not scored; EOS is.

    Args:
        logits: ``[b, L, num_classes]`` from ``model(images, targets)``.
        targets: ``[b, L]`` from ``AttentionTokenizer.encode``.
        label_smoothing: probability mass spread over all classes (0 disables; not applied to a batch
            that has ``anycase`` rows).
        anycase: ``[b]`` bool, rows whose letters are scored case-insensitively (:func:`fold_case`).
        pairs: the charset's :func:`case_pairs` (needed with ``anycase``).

    Returns:
        The scalar loss, averaged over the scored tokens (float32, also under autocast).
    """
    num_classes = logits.shape[-1]
    if anycase is not None and pairs is not None and pairs.numel() and bool(anycase.any()):
        # Either case of a letter is right for the marked rows: score log(p(upper) + p(lower)).
        log_probs, targets = fold_case(logits.float().log_softmax(-1), targets, anycase, pairs, batch_dim=0)
        flat_targets = targets.masked_fill(targets >= num_classes, -100).reshape(-1)
        return F.nll_loss(log_probs.reshape(-1, num_classes), flat_targets, ignore_index=-100)
    flat_targets = targets.masked_fill(targets >= num_classes, -100).reshape(-1)
    return F.cross_entropy(
        logits.float().reshape(-1, num_classes),  # [b, L, C] -> [b*L, C]
        flat_targets,
        ignore_index=-100,
        label_smoothing=label_smoothing,
    )


def _bracket_role(token: str) -> tuple[str, bool] | None:
    """``(kind, opens)`` of a bracket token, ``None`` for any other token."""
    # \left( and \right\rangle are brackets; \leftarrow and \rightarrow are not. Any \right<d> closes
    # any \left<d>: LaTeX allows \left( ... \right] and the invisible delimiter ``.``.
    for prefix, opens in (("\\left", True), ("\\right", False)):
        if token.startswith(prefix) and len(token) > len(prefix) and not token[len(prefix)].isalpha():
            return "left_right", opens
    for prefix, opens in (("\\begin{", True), ("\\end{", False)):
        if token.startswith(prefix):
            return "env:" + token[len(prefix) :], opens
    return BRACKETS.get(token)


def bracket_penalty(tokens: Sequence[str] | str) -> float:
    r"""The fraction of bracket tokens of a formula that are left unmatched.

    Brackets are ``{}``, ``()``, ``[]``, ``\{\}`` (= ``\lbrace\rbrace``), ``\lbrack\rbrack``,
    ``\langle\rangle``, ``\lfloor\rfloor``, ``\lceil\rceil``, ``\left<d> ... \right<d>`` (any two
    delimiters) and ``\begin{env} ... \end{env}``. A closing token closes the innermost open bracket of
    its kind, and brackets opened inside that one stay unmatched, so ``( [ ) ]`` matches one pair. The
    penalty is ``1 - matched pairs / all pairs``, where ``all pairs`` is the number of bracket tokens
    divided by two (the pairs a balanced formula with these tokens would have): 0 for a balanced formula
    or one without brackets, 1 when nothing matches.

    Args:
        tokens: the formula's tokens, or a space-separated token string.

    Returns:
        The penalty in ``[0, 1]``.

    >>> round(bracket_penalty(r"\frac { a } { b"), 3)  # one of the three braces is unmatched
    0.333
    """
    if isinstance(tokens, str):
        tokens = tokens.split()
    stack: list[str] = []
    matched = count = 0
    for token in tokens:
        role = _bracket_role(token)
        if role is None:
            continue
        kind, opens = role
        count += 1
        if opens:
            stack.append(kind)
        elif kind in stack:
            depth = len(stack) - 1 - stack[::-1].index(kind)
            del stack[depth:]
            matched += 1
    return 0.0 if count == 0 else 1.0 - 2.0 * matched / count


def formula_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    penalty: torch.Tensor,
    ce_weight: float = 0.8,
    penalty_weight: float = 0.2,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """The formula recipe's loss: ``ce_weight x CE + penalty_weight x bracket penalty``, per sample.

    The bracket penalty of a sample comes from a decode (an argmax), so it has no gradient of its own:
    added as a constant it would change the loss value and nothing else. It therefore enters as a
    per-sample weight on that sample's cross-entropy,

        ``loss = sum_i (ce_weight + penalty_weight * p_i) * CE_i / scored tokens``

    where ``CE_i`` sums sample ``i``'s token cross-entropies (PAD not scored) and ``p_i`` is held
    constant (detached). A sample whose decode leaves brackets unmatched is thus pushed harder towards
    its reference, by up to ``(ce_weight + penalty_weight) / ce_weight`` (1.25x with the defaults); with
    every ``p_i = 0`` the loss is exactly ``ce_weight * attention_loss`` (the same token mean), so the
    penalty re-weights samples without changing the loss scale. This reading of
    ``0.8 CE + 0.2 penalty`` keeps the seed's weights while giving the penalty a gradient.

    Args:
        logits: ``[b, L, num_classes]`` teacher-forced logits.
        targets: ``[b, L]`` targets (ids ``>= num_classes`` are padding).
        penalty: ``[b]`` bracket penalties in ``[0, 1]`` (:func:`bracket_penalty` of each decode).
        ce_weight: weight of the cross-entropy.
        penalty_weight: weight of the penalty-scaled cross-entropy.
        label_smoothing: probability mass spread over all classes (0 disables).

    Returns:
        The scalar loss (float32, also under autocast).

    Raises:
        ValueError: ``penalty`` does not have one value per sample.
    """
    b, length, num_classes = logits.shape
    if penalty.shape != (b,):
        raise ValueError(f"penalty must have shape [{b}], got {list(penalty.shape)}")
    scored = targets < num_classes
    token_ce = F.cross_entropy(
        logits.float().reshape(-1, num_classes),  # [b, L, C] -> [b*L, C]
        targets.masked_fill(~scored, -100).reshape(-1),
        ignore_index=-100,
        reduction="none",
        label_smoothing=label_smoothing,
    ).view(b, length)
    weight = ce_weight + penalty_weight * penalty.detach().float().to(logits.device)  # [b]
    return (token_ce * weight[:, None]).sum() / scored.sum().clamp_min(1)
