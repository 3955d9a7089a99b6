"""Every recogniser in ARCHS: output shapes, finite and decreasing loss, config round trip, contracts."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from ocrjobs.recognition.aster import ASTER, AttentionRecognizer
from ocrjobs.recognition.decode import attention_beam_search
from ocrjobs.recognition.losses import attention_loss, ctc_loss
from ocrjobs.recognition.models import ARCHS, Recognizer, arch_kwargs, build_recognizer
from ocrjobs.recognition.satrn import SATRN
from ocrjobs.recognition.tokenizer import AttentionTokenizer, Charset
from ocrjobs.recognition.vocab import make_tokenizer

NUM_CLASSES = 96

# Small enough to train in seconds on one CPU thread; one entry per ARCHS key (checked below).
TINY: dict[str, dict[str, Any]] = {
    "crnn_small": {"channels": (16, 24, 32, 48), "hidden": 96, "lstm_layers": 1, "dropout": 0.0},
    "crnn_vgg": {"channels": (16, 32, 48, 64), "hidden": 96, "lstm_layers": 1, "dropout": 0.0},
    "crnn_resnet": {
        "channels": (16, 24, 32, 48),
        "depths": (1, 1, 1, 1),
        "hidden": 96,
        "lstm_layers": 1,
        "dropout": 0.0,
    },
    "aster": {
        "channels": (16, 32, 48, 64, 64),
        "depths": (1, 1, 1, 1, 1),
        "hidden": 48,
        "decoder_hidden": 64,
        "embed_dim": 32,
        "attn_dim": 32,
        "tps_channels": (8, 16, 32),
        "tps_points": 10,
        "width": 96,
    },
    "satrn": {
        "dim": 64,
        "heads": 4,
        "encoder_layers": 2,
        "decoder_layers": 1,
        "encoder_ff": 128,
        "decoder_ff": 128,
        "dropout": 0.0,
    },
}


DECODING = {arch: build_recognizer(arch, NUM_CLASSES, **TINY[arch]).decoding for arch in ARCHS}
CTC_ARCHS = sorted(a for a, kind in DECODING.items() if kind == "ctc")
ATTENTION_ARCHS = sorted(a for a, kind in DECODING.items() if kind == "attention")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _loss(model: Recognizer, images: torch.Tensor, texts: list[str]) -> torch.Tensor:
    tokenizer = make_tokenizer(model.decoding, Charset())
    targets, lengths = tokenizer.encode(texts)
    if isinstance(model, AttentionRecognizer):
        return attention_loss(model(images, targets), targets)
    return ctc_loss(model(images), targets, lengths)


def test_tiny_configs_cover_the_table() -> None:
    assert set(TINY) == set(ARCHS)
    assert CTC_ARCHS and ATTENTION_ARCHS


def test_unknown_arch_and_bad_kwargs_fail_clearly() -> None:
    with pytest.raises(ValueError, match="unknown recognition arch"):
        build_recognizer("crnn_huge", NUM_CLASSES)
    with pytest.raises(TypeError):
        build_recognizer("crnn_small", NUM_CLASSES, not_a_field=1)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_default_config_shapes(arch: str) -> None:
    model = build_recognizer(arch, NUM_CLASSES).eval()
    assert model.config.arch == arch
    assert 1.5e6 < sum(p.numel() for p in model.parameters()) < 12e6
    images = torch.zeros(2, 3, 32, 128)
    with torch.no_grad():
        if isinstance(model, AttentionRecognizer):
            targets = torch.zeros(2, 6, dtype=torch.long)
            assert model(images, targets).shape == (2, 6, NUM_CLASSES)
            assert model.generate(images, max_len=4).shape[1:] == (4, NUM_CLASSES)
        else:
            assert model(images).shape == (2, 32, NUM_CLASSES)  # T = W / 4


@pytest.mark.parametrize("arch", CTC_ARCHS)
def test_ctc_models_take_any_width(arch: str) -> None:
    model = build_recognizer(arch, NUM_CLASSES, **TINY[arch]).eval()
    with torch.no_grad():
        for width in (16, 100, 320):
            assert model(torch.zeros(1, 3, 32, width)).shape == (1, width // 4, NUM_CLASSES)
        assert model(torch.zeros(1, 3, 48, 64)).shape == (1, 16, NUM_CLASSES)  # taller input collapses too


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_loss_is_finite_and_decreases(arch: str) -> None:
    torch.manual_seed(0)
    model = build_recognizer(arch, NUM_CLASSES, **TINY[arch]).train()
    images = torch.randn(4, 3, 32, 96)
    texts = ["ab", "Total", "12.50", ""]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = _loss(model, images, texts)
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_arch_kwargs_rebuild_the_same_network(arch: str) -> None:
    model = build_recognizer(arch, NUM_CLASSES, **TINY[arch])
    kwargs = arch_kwargs(model)
    assert kwargs["num_classes"] == NUM_CLASSES and "arch" not in kwargs
    # What YAML gives back: lists instead of tuples.
    yaml_like = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
    rebuilt = build_recognizer(arch, **yaml_like)
    assert rebuilt.config == model.config
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    rebuilt.load_state_dict(model.state_dict())


@pytest.mark.parametrize("arch", ATTENTION_ARCHS)
def test_stepwise_decoding_matches_teacher_forcing(arch: str) -> None:
    torch.manual_seed(0)
    model = build_recognizer(arch, NUM_CLASSES, **TINY[arch]).eval()
    images = torch.randn(2, 3, 32, 96)
    targets, _ = AttentionTokenizer().encode(["Cash", "GST 6%"])
    with torch.no_grad():
        forced = model(images, targets)
        state = model.init_state(model.encode(images))
        inputs = model.decoder_inputs(targets)
        steps = []
        for t in range(inputs.shape[1]):
            logits, state = model.step(state, inputs[:, t])
            steps.append(logits)
    assert torch.allclose(torch.stack(steps, dim=1), forced, atol=1e-4)


class _PrefixRedecodingSATRN(SATRN):
    """SATRN decoding as it did before its key/value cache: the whole prefix again at every step."""

    # Every part of the state per beam (the memory copied for each).
    init_beam_state = AttentionRecognizer.init_beam_state
    reorder_state = AttentionRecognizer.reorder_state

    def init_state(self, memory: torch.Tensor) -> tuple[torch.Tensor, ...]:
        flat = memory.flatten(2).transpose(1, 2)
        return flat, torch.zeros(flat.shape[0], 0, dtype=torch.long)

    def step(self, state: tuple[torch.Tensor, ...], tokens: torch.Tensor) -> tuple[torch.Tensor, Any]:
        flat, prefix = state
        prefix = torch.cat([prefix, tokens[:, None]], dim=1)
        return self.prediction(flat, prefix)[:, -1], (flat, prefix)


def test_satrn_cached_beam_search_matches_redecoding_the_prefix() -> None:
    """Beam search reorders the self-attention keys/values with its beams; the memory's stay shared."""
    torch.manual_seed(0)
    model = build_recognizer("satrn", NUM_CLASSES, **{**TINY["satrn"], "decoder_layers": 2}).eval()
    assert isinstance(model, SATRN)
    with torch.no_grad():  # an untrained model would end at once: make EOS unlikely, beams then reorder
        model.prediction.classifier.bias[0] = -5.0
    reference = _PrefixRedecodingSATRN(model.config).eval()
    reference.load_state_dict(model.state_dict())
    tokenizer = AttentionTokenizer()
    images = torch.randn(3, 3, 32, 96)
    with torch.no_grad():
        cached = attention_beam_search(model, images, tokenizer, beam_width=4, max_len=20)
        redecoded = attention_beam_search(reference, images, tokenizer, beam_width=4, max_len=20)
    assert [h.ids for h in cached] == [h.ids for h in redecoded]
    assert all(len(h.ids) > 10 for h in cached)
    for a, b in zip(cached, redecoded, strict=True):
        assert a.score == pytest.approx(b.score, rel=1e-4)


@pytest.mark.parametrize("arch", ATTENTION_ARCHS)
def test_beam_search_over_a_batch_equals_each_image_alone(arch: str) -> None:
    """Images decoded together (beams of all in one decoder step, images leaving as they end) read
    exactly as each alone; SATRN's memory keys/values stay one copy per image while others leave."""
    torch.manual_seed(1)
    model = build_recognizer(arch, NUM_CLASSES, **TINY[arch])
    images = torch.randn(5, 3, 32, 96)
    tokenizer = AttentionTokenizer()
    # A few steps towards texts of other lengths, so that the images' searches end at other steps.
    targets, _ = tokenizer.encode(["7", "Cash", "GST 6%", "TOTAL 12.50", "ab"])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        loss = attention_loss(model(images, targets), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    steps: list[int] = []
    kept_groups: list[list[int]] = []
    step, reorder_state = model.step, model.reorder_state

    def counting_step(state: Any, tokens: torch.Tensor) -> Any:
        steps.append(tokens.shape[0])
        return step(state, tokens)

    def recording_reorder_state(state: Any, rows: torch.Tensor, groups: torch.Tensor | None = None) -> Any:
        if groups is not None:
            kept_groups.append(groups.tolist())
        return reorder_state(state, rows, groups)

    with torch.no_grad():
        alone = [
            attention_beam_search(
                model, images[i : i + 1], tokenizer, beam_width=3, max_len=16, max_repeat=3
            )[0]
            for i in range(images.shape[0])
        ]
        model.step = counting_step  # type: ignore[method-assign]
        model.reorder_state = recording_reorder_state  # type: ignore[method-assign]
        together = attention_beam_search(model, images, tokenizer, beam_width=3, max_len=16, max_repeat=3)
    assert [h.ids for h in together] == [h.ids for h in alone]
    assert len({len(h.ids) for h in together}) >= 3, "the images should end at different steps"
    assert steps[0] == 15 and steps[-1] < 15, steps  # 3 rows per image; ended images leave the batch
    # An image before others left (the memories kept are not simply the first ones).
    assert any(kept != list(range(len(kept))) for kept in kept_groups), kept_groups
    for a, b in zip(together, alone, strict=True):
        assert a.score == pytest.approx(b.score, rel=1e-4)
        assert a.char_scores == pytest.approx(b.char_scores, rel=1e-4)


def test_aster_rectifier_starts_as_identity_and_resizes() -> None:
    model = build_recognizer("aster", NUM_CLASSES, **TINY["aster"]).eval()
    assert isinstance(model, ASTER)
    images = torch.rand(2, 3, 32, 96)
    with torch.no_grad():
        assert torch.allclose(model.rectification(images), images, atol=1e-3)
        assert model.rectification(torch.rand(1, 3, 50, 200)).shape == (1, 3, 32, 96)
    # The TPS matrices follow from the config: they are not weights.
    assert not any("inv_delta" in k or "grid_basis" in k for k in model.state_dict())


def test_aster_options() -> None:
    plain = build_recognizer("aster", NUM_CLASSES, **{**TINY["aster"], "rectify": False, "cell": "lstm"})
    assert isinstance(plain, ASTER)
    assert not any(k.startswith("rectification.") for k in plain.state_dict())
    targets = torch.zeros(1, 3, dtype=torch.long)
    with torch.no_grad():
        assert plain.eval()(torch.zeros(1, 3, 32, 64), targets).shape == (1, 3, NUM_CLASSES)
    with pytest.raises(ValueError, match="cell"):
        build_recognizer("aster", NUM_CLASSES, cell="rnn")


def test_satrn_encoder_keeps_a_2d_map_for_any_input_size() -> None:
    model = build_recognizer("satrn", NUM_CLASSES, **TINY["satrn"]).eval()
    assert isinstance(model, SATRN)
    with torch.no_grad():
        assert model.encode(torch.zeros(1, 3, 32, 96)).shape == (1, 64, 8, 24)
        memory = model.encode(torch.zeros(1, 3, 64, 128))
        assert memory.shape == (1, 64, 16, 32)
        targets = torch.zeros(1, 4, dtype=torch.long)
        assert model.decode(memory, targets).shape == (1, 4, NUM_CLASSES)


def test_stage_names_are_fixed() -> None:
    # Checkpoints freeze these names: renaming a stage breaks every saved model.
    for arch, stages in {
        "crnn_small": {"features", "sequence", "prediction"},
        "aster": {"rectification", "features", "sequence", "prediction"},
        "satrn": {"features", "sequence", "prediction"},
    }.items():
        model = build_recognizer(arch, NUM_CLASSES, **TINY[arch])
        assert {k.split(".")[0] for k in model.state_dict()} == stages


def test_satrn_cnn_stages_set_the_stride_and_keep_the_paper_layout_by_default() -> None:
    default = build_recognizer("satrn", NUM_CLASSES, **TINY["satrn"])
    assert isinstance(default, SATRN) and default.features.stride == 4
    # Two conv blocks, as in the paper (and as model folders written before the option stored them).
    assert [n for n, _ in default.features.named_parameters()][:2] == ["layers.0.weight", "layers.1.weight"]
    assert sum(isinstance(m, torch.nn.Conv2d) for m in default.features.modules()) == 2
    deeper = build_recognizer("satrn", NUM_CLASSES, **TINY["satrn"], cnn_stages=3, cnn_depth=2).eval()
    assert isinstance(deeper, SATRN) and deeper.features.stride == 8
    assert sum(isinstance(m, torch.nn.Conv2d) for m in deeper.features.modules()) == 6
    with torch.no_grad():
        assert deeper.encode(torch.zeros(2, 3, 48, 160)).shape == (2, TINY["satrn"]["dim"], 6, 20)
    assert (
        deeper.variable_width and not build_recognizer("aster", NUM_CLASSES, **TINY["aster"]).variable_width
    )
    with pytest.raises(ValueError, match="stages"):
        build_recognizer("satrn", NUM_CLASSES, **TINY["satrn"], cnn_stages=0)


def test_satrn_grows_deeper_from_a_trained_smaller_one_without_changing_its_output() -> None:
    torch.manual_seed(0)
    small = build_recognizer("satrn", NUM_CLASSES, **TINY["satrn"]).train()
    images, texts = torch.randn(4, 3, 32, 96), ["ab", "Total", "12.50", "x"]
    optimizer = torch.optim.Adam(small.parameters(), lr=3e-3)
    for _ in range(5):  # trained weights, not a fresh init (LayerNorms and biases away from 0 and 1)
        optimizer.zero_grad()
        _loss(small, images, texts).backward()
        optimizer.step()
    deeper_kwargs = {**TINY["satrn"], "encoder_layers": 3, "decoder_layers": 3}
    deeper = build_recognizer("satrn", NUM_CLASSES, **deeper_kwargs)
    assert isinstance(deeper, SATRN)
    added = deeper.load_deeper(small.state_dict())
    assert added == [
        "prediction.transformer.layers.1",
        "prediction.transformer.layers.2",
        "sequence.layers.2",
    ]
    small.eval(), deeper.eval()
    tokenizer = make_tokenizer(small.decoding, Charset())
    targets, _ = tokenizer.encode(texts)
    with torch.no_grad():
        assert torch.allclose(deeper(images, targets), small(images, targets), atol=1e-5)
    # The added layers learn: the deeper model's loss goes down from the smaller one's.
    deeper.train()
    optimizer = torch.optim.Adam(deeper.parameters(), lr=3e-3)
    start = _loss(deeper, images, texts).item()
    for _ in range(10):
        optimizer.zero_grad()
        _loss(deeper, images, texts).backward()
        optimizer.step()
    assert _loss(deeper, images, texts).item() < start
    assert deeper.sequence.layers[2].attn.out_proj.weight.abs().sum() > 0
    # Same depth: a plain strict load.
    assert build_recognizer("satrn", NUM_CLASSES, **TINY["satrn"]).load_deeper(small.state_dict()) == []


def test_satrn_refuses_to_grow_from_weights_that_do_not_fit() -> None:
    small = build_recognizer("satrn", NUM_CLASSES, **TINY["satrn"])
    deeper = build_recognizer("satrn", NUM_CLASSES, **{**TINY["satrn"], "encoder_layers": 3})
    assert isinstance(small, SATRN) and isinstance(deeper, SATRN)
    with pytest.raises(ValueError, match="does not have"):
        small.load_deeper(deeper.state_dict())  # shrinking
    wider = build_recognizer("satrn", NUM_CLASSES, **{**TINY["satrn"], "encoder_ff": 64})
    assert isinstance(wider, SATRN)
    with pytest.raises(ValueError, match="another shape"):
        wider.load_deeper(small.state_dict())
    state = dict(small.state_dict())
    del state["sequence.layers.0.attn_norm.weight"]  # a layer in the middle, not a new last one
    with pytest.raises(ValueError, match="only the last layers"):
        deeper.load_deeper(state)
    del state["features.layers.0.weight"]
    with pytest.raises(ValueError, match="only whole encoder/decoder layers"):
        deeper.load_deeper(state)
