"""The online OCR service on the session's local Ray, called over real HTTP on 127.0.0.1.

A tiny random-weight application (detector + a CTC and an attention member with different input sizes,
a bearer token configured) answers the structure, bad-input, batching and schema-fuzz tests: its text
is noise, but the response structure, the ensemble's choice (the best mean score) and the status codes
hold for trained models too. The last tests deploy ``configs/serve.yaml``'s application with the
shipped models and check their text on rendered receipt lines and on an im2latex validate formula.

Serve is started once for the module on a free port and shut down at the end, so other modules can
keep using the session's Ray.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import matplotlib
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from ocrjobs.metrics.text import cer
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.usefixtures("ray_session")

TOKEN_ENV = "OCRJOBS_TEST_SERVE_TOKEN"
# A throwaway value for this test only. It reaches the ingress through `env_vars`, which Serve shows in
# its status: real deployments give the replicas' hosts the variable instead (configs/serve.yaml).
TOKEN = "test-token-not-a-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_BODY = 300_000
MAX_PIXELS = 2_000_000
MAX_PDF_PAGES = 4
# A stalled upload is answered 408 once its mean rate falls under the minimum, after this grace.
BODY_GRACE_S = 6.0
FONT = matplotlib.get_data_path() + "/fonts/ttf/DejaVuSans.ttf"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def render_lines(lines: list[str], size: int = 26, width: int = 640) -> Image.Image:
    """Receipt-like black lines of text on white, one per row (DejaVu Sans)."""
    font = ImageFont.truetype(FONT, size)
    step = int(size * 1.9)
    image = Image.new("RGB", (width, step * len(lines) + 2 * size), "white")
    draw = ImageDraw.Draw(image)
    for k, text in enumerate(lines):
        draw.text((size, size + k * step), text, font=font, fill="black")
    return image


def write_tiny_models(root: Path) -> tuple[str, str, str]:
    """Random-weight detector, CTC member (32 px high, up to 256 wide) and attention member (32x96)."""
    import torch

    from ocrjobs.detection.dbnet import build_detector
    from ocrjobs.detection.postprocess import DBPostProcessor
    from ocrjobs.detection.predictor import DetectionPredictor
    from ocrjobs.recognition.models import build_recognizer
    from ocrjobs.recognition.predictor import RecognitionPredictor
    from ocrjobs.recognition.tokenizer import AttentionTokenizer, CTCTokenizer

    torch.manual_seed(0)
    # Zero thresholds make the random detector's output weight-independent: one region per image.
    detector = DetectionPredictor(
        build_detector("dbnet_mobilenetv3", neck_channels=32),
        limit_side=256,
        postprocessor=DBPostProcessor(thresh=0.0, box_thresh=0.0),
        name="det_tiny",
        version="test",
    )
    ctc = CTCTokenizer()
    crnn = build_recognizer("crnn_small", ctc.num_classes, channels=(8, 8, 8, 8), hidden=8)
    attention = AttentionTokenizer()
    aster = build_recognizer(
        "aster",
        attention.num_classes,
        channels=(8, 16, 16, 16, 16),
        depths=(1, 1, 1, 1, 1),
        hidden=16,
        decoder_hidden=16,
        embed_dim=8,
        attn_dim=16,
        tps_channels=(8, 8, 8),
        tps_points=6,
        width=96,
    )
    return (
        detector.save_model_dir(root / "det_tiny"),
        RecognitionPredictor(crnn, ctc, name="crnn_tiny", version="test").save_model_dir(root / "crnn_tiny"),
        RecognitionPredictor(
            aster, attention, width=96, max_len=8, name="aster_tiny", version="test"
        ).save_model_dir(root / "aster_tiny"),
    )


FORMULA_TOKENS = ("x", "^", "{", "}", "2", "\\frac", "+", "=", "y")


def write_tiny_formula_models(root: Path) -> tuple[str, str]:
    """Two random-weight SATRN formula members sharing a LaTeX vocabulary, at 32x64 and 32x128."""
    import torch

    from ocrjobs.recognition.latex import LatexTokenizer, LatexVocabulary
    from ocrjobs.recognition.models import build_recognizer
    from ocrjobs.recognition.predictor import RecognitionPredictor

    torch.manual_seed(1)
    tokenizer = LatexTokenizer(LatexVocabulary(FORMULA_TOKENS))
    folders = []
    for width in (64, 128):
        model = build_recognizer(
            "satrn",
            tokenizer.num_classes,
            dim=16,
            heads=2,
            encoder_layers=1,
            decoder_layers=1,
            encoder_ff=16,
            decoder_ff=16,
        )
        predictor = RecognitionPredictor(
            model, tokenizer, height=32, width=width, max_len=8, name=f"latex_w{width}", version="test"
        )
        folders.append(predictor.save_model_dir(root / f"latex_w{width}"))
    return folders[0], folders[1]


@pytest.fixture(scope="module")
def serve_http(ray_session: None) -> Iterator[str]:
    """Serve's HTTP proxy on 127.0.0.1 and a free port; Serve is shut down after the module."""
    from ray import serve

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def service(serve_http: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The tiny application under the route prefix ``/tiny``; returns its base URL."""
    from ray import serve

    from ocrjobs.serve.app import build_app

    root = tmp_path_factory.mktemp("serve_models")
    detector, crnn, aster = write_tiny_models(root)
    small, large = write_tiny_formula_models(root)
    batching = {"batch_wait_timeout_s": 0.05, "num_cpus": 0.25}
    args = {
        "detector": {"model": detector, **batching},
        "members": [{"model": crnn, **batching}, {"model": aster, **batching}],
        "formulas": [{"model": small, "num_cpus": 0.05}, {"model": large, "num_cpus": 0.05}],
        "ingress": {"num_cpus": 0.1, "env_vars": {TOKEN_ENV: TOKEN}},
        "limits": {
            "max_body_bytes": MAX_BODY,
            "max_pixels": MAX_PIXELS,
            "body_timeout_s": 20.0,
            "body_grace_s": BODY_GRACE_S,
            "body_min_bytes_per_s": 1024,
            "max_pdf_pages": MAX_PDF_PAGES,
            "pdf_dpi": 72,  # a page of w x h pt renders to the w x h pixels it was made from
        },
        "auth": {"token_env": TOKEN_ENV},
    }
    serve.run(build_app(args), name="tiny", route_prefix="/tiny")
    try:
        yield f"{serve_http}/tiny"
    finally:
        serve.delete("tiny")


@pytest.fixture
def client(service: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service, headers=AUTH, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def page_png() -> bytes:
    return _encode(render_lines(["RECEIPT 0042", "COFFEE 3.50", "TOTAL 5.75"], size=16, width=240))


# ---------------------------------------------------------------- answers


def _check_ensemble_choice(body: dict, n_members: int = 2) -> None:
    """The winner is the first candidate, candidates are ranked by score, every member is reported."""
    assert len(body["members"]) == n_members
    candidates = body["candidates"]
    assert body["text"] == candidates[0]["text"]
    assert body["score"] == pytest.approx(candidates[0]["score"])
    scores = [c["score"] for c in candidates]
    assert scores == sorted(scores, reverse=True)
    assert {m["text"] for m in body["members"]} == {c["text"] for c in candidates}
    for c in candidates:
        assert len(c["member_scores"]) == n_members
        # The ensemble score is exp(mean log score) = the geometric mean of the members' scores.
        assert c["score"] == pytest.approx(float(np.prod(c["member_scores"])) ** (1 / n_members), rel=1e-4)


def test_ocr_returns_lines_and_the_full_text(client: httpx.Client, page_png: bytes) -> None:
    response = client.post("/v1/ocr", content=page_png, headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["width"], body["height"]) == Image.open(io.BytesIO(page_png)).size
    assert body["models"] == {"detector": "det_tiny@test", "members": ["crnn_tiny@test", "aster_tiny@test"]}
    assert body["lines"], "the zero-threshold detector finds a region in every image"
    for line in body["lines"]:
        points = np.asarray(line["polygon"])
        assert points.shape[1] == 2 and len(points) >= 4
        assert 0 <= line["det_score"] <= 1 and 0 <= line["score"] <= 1
        assert [m["name"] for m in line["members"]] == ["crnn_tiny", "aster_tiny"]
        assert line["text"] in {m["text"] for m in line["members"]}
    assert body["text"] == "\n".join(line["text"] for line in body["lines"] if line["text"])

    # The same image as multipart/form-data, and as JPEG, is read the same way.
    multipart = client.post("/v1/ocr", files={"file": ("page.png", page_png, "image/png")})
    assert multipart.status_code == 200, multipart.text
    assert multipart.json() == body
    jpeg = _encode(Image.open(io.BytesIO(page_png)).convert("RGB"), "JPEG")
    assert client.post("/v1/ocr", content=jpeg, headers={"Content-Type": "image/jpeg"}).status_code == 200


def test_ocr_reads_a_pdf_page_by_page_as_it_reads_the_same_pages_as_images(client: httpx.Client) -> None:
    from ocrjobs.documents import pdf_from_images
    from tests.unit.test_documents import encrypted_pdf

    pages = [
        np.asarray(render_lines([f"RECEIPT {k:04d}", "COFFEE 3.50", f"TOTAL {k}.75"], size=16, width=240))
        for k in range(3)
    ]
    # The third page is over limits.max_pixels at 72 dpi: that page alone is refused.
    big = np.full((1500, 1500, 3), 255, np.uint8)
    pdf = pdf_from_images([*pages, big], dpi=72)
    response = client.post("/v1/ocr", content=pdf, headers={"Content-Type": "application/pdf"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["page_count"] == 4 and [p["page"] for p in body["pages"]] == [1, 2, 3, 4]
    assert body["models"] == {"detector": "det_tiny@test", "members": ["crnn_tiny@test", "aster_tiny@test"]}
    for page, image in zip(body["pages"], pages, strict=False):
        alone = client.post(
            "/v1/ocr", content=_encode(Image.fromarray(image)), headers={"Content-Type": "image/png"}
        )
        assert alone.status_code == 200, alone.text
        expected = alone.json()
        assert page["error"] is None and page["lines"]
        assert (page["width"], page["height"]) == (expected["width"], expected["height"])
        assert page["text"] == expected["text"]
        assert [line["polygon"] for line in page["lines"]] == [line["polygon"] for line in expected["lines"]]
    assert (body["pages"][3]["error"], body["pages"][3]["lines"]) == ("too_many_pixels", None)
    assert body["text"] == "\f".join(p["text"] or "" for p in body["pages"])

    # Sniffed from its bytes whatever the label, and as a multipart file part.
    as_octets = client.post("/v1/ocr", files={"file": ("scan.pdf", pdf, "application/pdf")})
    assert as_octets.status_code == 200 and as_octets.json()["page_count"] == 4
    assert (
        client.post("/v1/ocr", content=pdf, headers={"Content-Type": "image/png"}).json()["page_count"] == 4
    )

    refused = {
        "encrypted": (encrypted_pdf(), 400),
        "corrupt": (pdf[: len(pdf) // 2], 400),
        "too_many_pages": (pdf_from_images(pages * 2, dpi=72), 413),
    }
    for reason, (data, status) in refused.items():
        answer = client.post("/v1/ocr", content=data, headers={"Content-Type": "application/pdf"})
        assert (answer.status_code, answer.json()["error"]) == (status, reason), answer.text
    single = client.post("/v1/recognize", content=pdf, headers={"Content-Type": "application/pdf"})
    assert (single.status_code, single.json()["error"]) == (415, "unsupported_media_type")


def test_ocr_answers_in_the_bulk_exports_formats(client: httpx.Client, page_png: bytes) -> None:
    import xml.etree.ElementTree as ET

    import pypdfium2 as pdfium

    from ocrjobs.documents import pdf_from_images
    from ocrjobs.results import ALTO_NAMESPACE

    png = {"content": page_png, "headers": {"Content-Type": "image/png"}}
    body = client.post("/v1/ocr", **png).json()
    words = sorted(body["text"].split())
    answers = {fmt: client.post(f"/v1/ocr?format={fmt}", **png) for fmt in ("txt", "hocr", "alto", "pdf")}
    for fmt, answer in answers.items():
        assert answer.status_code == 200, (fmt, answer.text)
    assert answers["txt"].headers["content-type"].startswith("text/plain")
    assert sorted(answers["txt"].text.split()) == words  # the same lines, in reading order
    hocr = ET.fromstring(answers["hocr"].content)
    spans = hocr.iter("{http://www.w3.org/1999/xhtml}span")
    assert sorted(s.text for s in spans if s.get("class") == "ocrx_word") == words
    alto = ET.fromstring(answers["alto"].content)
    strings = alto.iter(f"{{{ALTO_NAMESPACE}}}String")
    assert sorted(s.get("CONTENT") for s in strings if s.get("CONTENT")) == words
    pdf = pdfium.PdfDocument(answers["pdf"].content)
    try:
        assert answers["pdf"].headers["content-type"] == "application/pdf" and len(pdf) == 1
        assert sorted(pdf[0].get_textpage().get_text_range().split()) == words
    finally:
        pdf.close()

    # A PDF upload comes back as a searchable PDF of its pages, each the size it had; a page that could
    # not be read has none.
    pages = [np.full((200, 300, 3), 255, np.uint8), np.full((1500, 1500, 3), 255, np.uint8)]
    source = pdf_from_images(pages, dpi=72)
    answer = client.post("/v1/ocr?format=pdf", content=source, headers={"Content-Type": "application/pdf"})
    assert answer.status_code == 200, answer.text
    pdf = pdfium.PdfDocument(answer.content)
    try:
        assert len(pdf) == 1 and pdf[0].get_size() == pytest.approx((300, 200), abs=0.5)
    finally:
        pdf.close()
    text = client.post("/v1/ocr?format=txt", content=source, headers={"Content-Type": "application/pdf"})
    assert text.text.count("\f") == 1  # two pages, the second empty (not read: too many pixels)

    wrong = client.post("/v1/ocr?format=docx", **png)
    assert (wrong.status_code, wrong.json()["error"]) == (400, "bad_format")
    assert "hocr, alto, txt, pdf" in wrong.json()["detail"]


def test_recognize_reports_every_member_and_picks_the_best_mean(client: httpx.Client) -> None:
    crop = _encode(render_lines(["TOTAL 12.50"], size=20, width=200))
    response = client.post("/v1/recognize", content=crop, headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.text
    body = response.json()
    _check_ensemble_choice(body)
    assert body["models"]["members"] == ["crnn_tiny@test", "aster_tiny@test"]


def test_latex_reads_a_formula_with_the_formula_ensemble(client: httpx.Client) -> None:
    image = Image.new("RGB", (160, 40), "white")
    ImageDraw.Draw(image).text((8, 12), "x^2 + y = 2", fill="black")
    response = client.post("/v1/latex", content=_encode(image), headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.text
    body = response.json()
    _check_ensemble_choice(body)
    assert body["models"] == {
        "detector": None,
        "members": ["latex_w64@test", "latex_w128@test"],
    }
    assert [m["name"] for m in body["members"]] == ["latex_w64", "latex_w128"]
    assert set(body["text"].split()) <= set(FORMULA_TOKENS)


def test_models_stats_health_and_openapi(client: httpx.Client, service: str) -> None:
    models = client.get("/v1/models").json()
    assert models["detector"]["name"] == "det_tiny"
    assert [(m["name"], m["decoding"], m["width"]) for m in models["members"]] == [
        ("crnn_tiny", "ctc", 256),
        ("aster_tiny", "attention", 96),
    ]
    assert [m["deployment"] for m in models["members"]] == ["Recognizer_crnn_tiny", "Recognizer_aster_tiny"]
    assert models["ensemble"] == {"members": 2, "rounds": 2, "shared_charset": True}
    assert models["limits"]["max_pixels"] == MAX_PIXELS
    assert [(m["deployment"], m["width"], m["charset_name"]) for m in models["formulas"]] == [
        ("Formula_latex_w64", 64, "latex"),
        ("Formula_latex_w128", 128, "latex"),
    ]
    assert models["formula_ensemble"] == {"members": 2, "rounds": 2, "shared_charset": True}
    stats = client.get("/v1/stats").json()
    assert set(stats["deployments"]) == {
        "Detector",
        "Recognizer_crnn_tiny",
        "Recognizer_aster_tiny",
        "Formula_latex_w64",
        "Formula_latex_w128",
    }
    # Open routes: no token needed.
    assert httpx.get(f"{service}/healthz").json() == {"status": "ok"}
    schema = httpx.get(f"{service}/openapi.json").json()
    assert {"/v1/ocr", "/v1/recognize", "/v1/latex", "/v1/models", "/v1/stats", "/healthz"} <= set(
        schema["paths"]
    )
    assert set(schema["paths"]["/v1/ocr"]["post"]["requestBody"]["content"]) >= {
        "application/pdf",
        "image/png",
        "multipart/form-data",
    }
    assert httpx.get(f"{service}/docs").status_code == 200


# ---------------------------------------------------------------- bad inputs


def _png_bomb() -> bytes:
    # 3000 x 3000 one-bit pixels compress to about a kilobyte: 9 MP, over the limit, refused from the
    # header before a pixel buffer is allocated.
    return _encode(Image.new("1", (3000, 3000)))


def _ico() -> bytes:
    return _encode(Image.new("RGB", (16, 16)), "ICO")


def _bad_requests(page_png: bytes) -> dict[str, tuple[dict, int, str]]:
    png = {"Content-Type": "image/png"}
    return {
        "wrong content type": ({"content": page_png, "headers": {"Content-Type": "text/plain"}}, 415, ""),
        "no content type": ({"content": page_png}, 415, "unsupported_media_type"),
        "json body": ({"json": {"url": "http://169.254.169.254/"}}, 415, "unsupported_media_type"),
        "empty body": ({"content": b"", "headers": png}, 400, "empty"),
        "not an image": ({"content": b"hello, world", "headers": png}, 400, "not_an_image"),
        "truncated png": ({"content": page_png[: len(page_png) // 2], "headers": png}, 400, "corrupt"),
        "body over the limit": ({"content": b"\0" * (MAX_BODY + 1), "headers": png}, 413, "body_too_large"),
        "decompression bomb": ({"content": _png_bomb(), "headers": png}, 413, "too_many_pixels"),
        "unsupported format": (
            {"content": _ico(), "headers": {"Content-Type": "image/x-icon"}},
            415,
            "unsupported",
        ),
        "multipart without file": (
            {"files": {"image": ("a.png", page_png, "image/png")}},
            400,
            "missing_file",
        ),
        "multipart text part": ({"files": {"file": ("a.txt", b"hello", "text/plain")}}, 415, ""),
        "malformed multipart": (
            {"content": b"--x\r\nnot a part", "headers": {"Content-Type": "multipart/form-data; boundary=y"}},
            400,
            "bad_multipart",
        ),
        "no token": ({"content": page_png, "headers": {**png, "Authorization": ""}}, 401, "unauthorized"),
        "wrong token": ({"content": page_png, "headers": {**png, "Authorization": "Bearer nope"}}, 401, ""),
    }


BAD_NAMES = list(_bad_requests(b"").keys())


@pytest.mark.parametrize("name", BAD_NAMES)
@pytest.mark.parametrize("route", ["/v1/ocr", "/v1/recognize", "/v1/latex"])
def test_bad_inputs_get_their_4xx_without_internals(
    client: httpx.Client, page_png: bytes, name: str, route: str
) -> None:
    kwargs, status, error = _bad_requests(page_png)[name]
    response = client.post(route, **kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"} and body["detail"]
    if error:
        assert body["error"] == error
    assert "Traceback" not in response.text and 'File "' not in response.text and TOKEN not in response.text


def test_a_body_without_content_length_is_cut_at_the_limit(client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(MAX_BODY // 10_000 + 5):
            yield b"\0" * 10_000

    response = client.post("/v1/ocr", content=chunks(), headers={"Content-Type": "image/png"})
    assert response.status_code == 413 and response.json()["error"] == "body_too_large"


def test_protected_routes_need_the_token(service: str) -> None:
    for path in ("/v1/models", "/v1/stats"):
        response = httpx.get(f"{service}{path}")
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"


def test_the_service_keeps_answering_after_bad_inputs(client: httpx.Client, page_png: bytes) -> None:
    assert client.get("/healthz").status_code == 200
    response = client.post("/v1/ocr", content=page_png, headers={"Content-Type": "image/png"})
    assert response.status_code == 200 and response.json()["lines"]
    counts = client.get("/v1/stats").json()["responses"]
    assert counts.get("/v1/ocr 415", 0) >= 3 and counts.get("/v1/ocr 200", 0) >= 1
    assert not [key for key in counts if key.endswith(" 500")]


# ---------------------------------------------------------------- slow, large and vanishing clients


def _half_sent_upload(service: str, declared: int = 50_000, sent: int = 100) -> socket.socket:
    """A raw connection that sends a ``/v1/ocr`` request's headers and ``sent`` of its ``declared``
    body bytes, then stalls."""
    url = httpx.URL(service)
    sock = socket.create_connection((url.host, url.port), timeout=30)
    head = (
        f"POST {url.path}/v1/ocr HTTP/1.1\r\nHost: {url.host}:{url.port}\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Type: image/png\r\nContent-Length: {declared}\r\n\r\n"
    )
    sock.sendall(head.encode() + b"\0" * sent)
    return sock


def _answer(sock: socket.socket, timeout: float) -> tuple[int, dict[str, Any]]:
    """Status and JSON body of the response on a raw connection."""
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            length = re.search(rb"(?im)^content-length: *(\d+)", head)
            assert length, head
            if len(body) >= int(length.group(1)):
                return int(head.split()[1]), json.loads(body[: int(length.group(1))])
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk


def _in_progress(service: str) -> int | None:
    """Image requests the ingress holds now (``None``: /v1/stats does not say or does not answer)."""
    try:
        stats = httpx.get(f"{service}/v1/stats", headers=AUTH, timeout=5).json()
    except httpx.TimeoutException:
        return None
    return stats.get("image_requests", {}).get("in_progress")


def _responses(service: str) -> dict[str, int]:
    return httpx.get(f"{service}/v1/stats", headers=AUTH, timeout=5).json()["responses"]


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll the server's state until ``condition()`` holds; whether it did within ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _healthz_seconds(service: str) -> float:
    """How long ``/healthz`` took to answer 200 (inf: no answer within 5 s)."""
    start = time.perf_counter()
    try:
        response = httpx.get(f"{service}/healthz", timeout=5)
    except httpx.TimeoutException:
        return float("inf")
    assert response.status_code == 200, response.text
    return time.perf_counter() - start


def test_stalled_uploads_neither_starve_healthz_nor_hold_their_slots(
    service: str, client: httpx.Client, page_png: bytes
) -> None:
    png = {"Content-Type": "image/png"}
    uploads = [_half_sent_upload(service) for _ in range(200)]
    try:
        # Once the ingress holds all 200 (each waiting for its body) ...
        held = _wait_for(lambda: _in_progress(service) == 200)
        # ... /healthz still answers at once, and a whole request is read and answered.
        assert _healthz_seconds(service) < 1.0
        response = client.post("/v1/ocr", content=page_png, headers=png)
        assert response.status_code == 200, response.text
        assert held, f"the ingress holds {_in_progress(service)} uploads, not 200"

        # With every image slot taken (default: 256 ongoing requests, 16 reserved for the other
        # routes), an upload is refused at once; /healthz is still unaffected.
        limit = httpx.get(f"{service}/v1/stats", headers=AUTH).json()["image_requests"]["limit"]
        assert limit == 240
        uploads += [_half_sent_upload(service) for _ in range(limit - 200)]
        assert _wait_for(lambda: _in_progress(service) == limit)
        start = time.perf_counter()
        refused = client.post("/v1/ocr", content=page_png, headers=png)
        assert time.perf_counter() - start < 1.0
        assert refused.status_code == 503 and refused.json()["error"] == "overloaded"
        assert refused.headers["retry-after"] == "1"
        assert _healthz_seconds(service) < 1.0

        # Stalled uploads get 408 once their mean rate is under the minimum, and free their slots.
        for sock in uploads:
            status, body = _answer(sock, timeout=BODY_GRACE_S + 20)
            assert (status, body["error"]) == (408, "body_timeout"), body
        assert "bytes/s" in body["detail"]
        assert _wait_for(lambda: _in_progress(service) == 0)
    finally:
        for sock in uploads:
            sock.close()
    response = client.post("/v1/ocr", content=page_png, headers=png)
    assert response.status_code == 200, response.text


def test_headers_over_the_limit_get_431(service: str) -> None:
    big = {"X-Padding": "a" * 20_000}  # over the default 16 KiB
    for method, path in (("GET", "/healthz"), ("POST", "/v1/ocr"), ("GET", "/v1/stats")):
        response = httpx.request(method, f"{service}{path}", headers={**AUTH, **big}, timeout=30)
        assert response.status_code == 431, (path, response.text)
        assert response.json()["error"] == "headers_too_large"
    assert httpx.get(f"{service}/healthz", headers={"X-Padding": "a" * 8_000}).status_code == 200
    assert _responses(service).get("/healthz 431", 0) >= 1


def test_a_client_that_disconnects_mid_body_is_counted_as_a_disconnect(service: str) -> None:
    before = _responses(service)
    sock = _half_sent_upload(service)
    held = _wait_for(lambda: _in_progress(service) == 1)
    sock.close()

    def changed(code: str) -> bool:
        return _responses(service).get(f"/v1/ocr {code}", 0) > before.get(f"/v1/ocr {code}", 0)

    _wait_for(lambda: changed("499") or changed("500"))
    assert not changed("500"), "a client disconnect was counted as a server error"
    assert changed("499")
    assert held and _in_progress(service) == 0


# ---------------------------------------------------------------- batching and fuzzing


def test_concurrent_requests_are_batched(service: str, page_png: bytes) -> None:
    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=service, headers=AUTH, timeout=120) as c:
            responses = await asyncio.gather(
                *(
                    c.post("/v1/ocr", content=page_png, headers={"Content-Type": "image/png"})
                    for _ in range(12)
                )
            )
        return [r.status_code for r in responses]

    assert asyncio.run(burst()) == [200] * 12
    stats = httpx.get(f"{service}/v1/stats", headers=AUTH).json()["deployments"]
    largest = {
        f"{deployment}.{method}": s["max_batch_size"]
        for deployment, methods in stats.items()
        for method, s in methods.items()
    }
    # 12 requests at once through queues that wait 50 ms for company: some batch holds several.
    assert max(largest.values()) > 1, json.dumps(stats)


def test_fuzzing_the_served_openapi_schema_finds_no_server_errors(service: str) -> None:
    """schemathesis generates requests from the served schema (valid and invalid ones); none may 5xx."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable

    schema = schemathesis.openapi.from_url(f"{service}/openapi.json")
    statuses: dict[str, set[int]] = {}

    def fuzz(operation: Any, mode: Any, seen: set[int], examples: int) -> None:
        @given(case=operation.as_strategy(mode))
        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def no_server_error(case: Any) -> None:
            response = case.call(base_url=service, headers=AUTH, timeout=120)
            seen.add(response.status_code)
            # Bytes, not text: ``?format=pdf`` answers a binary PDF (PDFium's header has bytes >= 0x80).
            body = response.content
            assert response.status_code < 500, (case.media_type, response.status_code, body[:2000])
            assert b"Traceback" not in body

        no_server_error()

    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in schemathesis.GenerationMode:
            key = f"{operation.method.upper()} {operation.path} {mode.value}"
            examples = 12 if operation.method.upper() == "POST" else 4
            try:
                fuzz(operation, mode, statuses.setdefault(key, set()), examples)
            except Unsatisfiable:
                # Nothing to make invalid (GET /healthz has no parameters, body or auth).
                assert mode == schemathesis.GenerationMode.NEGATIVE, key
                del statuses[key]
    assert len(statuses) >= 9 and all(statuses.values()), statuses
    # The fuzzer did reach the models, not only the input checks.
    assert 200 in statuses["POST /v1/ocr positive"] | statuses["POST /v1/recognize positive"]
    assert httpx.get(f"{service}/healthz").status_code == 200


# ---------------------------------------------------------------- shipped models


RECEIPT_LINES = ["TOTAL 12.50", "CASH 20.00", "CHANGE 7.50", "GST 6% 0.71", "THANK YOU"]


@pytest.fixture(scope="module")
def shipped(serve_http: str) -> Iterator[str]:
    """``configs/serve.yaml``'s application with the shipped models, under ``/shipped``."""
    from ray import serve

    from ocrjobs.serve.app import build_app
    from ocrjobs.serve.cli import local_model_paths
    from ocrjobs.serve.config import read_serve_file

    _, _, config = read_serve_file(REPO_ROOT / "configs" / "serve.yaml")
    local_model_paths(config, REPO_ROOT)
    for section in [config.detector, *config.members]:
        assert Path(section.model).is_dir(), f"shipped model folder {section.model} is missing"
        section.num_cpus = 0.4  # beside the tiny application on the 2-CPU test Ray
    assert config.formulas, "configs/serve.yaml ships no formula members"
    for section in config.formulas:
        assert Path(section.model).is_dir(), f"shipped model folder {section.model} is missing"
        # Three members: the tiny application (0.95 CPU), this one and the short-lived applications of
        # other tests (e.g. 0.03 CPU) must share the 2 CPUs, or serve.run waits for room forever.
        section.num_cpus = 0.03
    config.ingress.num_cpus = 0.1
    config.auth.token_env = None
    serve.run(build_app(config), name="shipped", route_prefix="/shipped")
    try:
        yield f"{serve_http}/shipped"
    finally:
        serve.delete("shipped")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_shipped_models_read_rendered_receipt_lines(shipped: str, fmt: str) -> None:
    # Receipt scale (20 px text on a 480 px wide slip), the scale of the SROIE receipts the detector
    # was trained on: much larger text is outside what it has seen.
    image = _encode(render_lines(RECEIPT_LINES, size=20, width=480), fmt)
    response = httpx.post(
        f"{shipped}/v1/ocr", content=image, headers={"Content-Type": f"image/{fmt.lower()}"}, timeout=120
    )
    assert response.status_code == 200, response.text
    body = response.json()
    error = cer([body["text"]], ["\n".join(RECEIPT_LINES)])
    assert error <= 0.1, f"CER {error:.3f}: {body['text']!r}"


def test_shipped_formula_models_read_a_validate_formula(shipped: str, shared_data: Path) -> None:
    # One of the shortest im2latex validate formulas (18 tokens), which the shipped pair of validate
    # 1 - WER 0.54 already read exactly on 2026-12-06; more than a quarter of its tokens wrong fails.
    from ocrjobs.data.formats import read_im2latex
    from ocrjobs.metrics.text import edit_distance

    (record,) = [
        r
        for r in read_im2latex(str(shared_data / "im2latex"), "validate")
        if r.uri.endswith("/73778ad253.png")
    ]
    response = httpx.post(
        f"{shipped}/v1/latex",
        content=Path(record.uri).read_bytes(),
        headers={"Content-Type": "image/png"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert [m["name"] for m in body["members"]] == ["satrn_latex", "satrn64_latex", "satrn96_latex"]
    truth = record.regions[0].text.split()
    assert edit_distance(body["text"].split(), truth) <= len(truth) // 4, body["text"]


def test_latex_without_formula_models_is_404_with_a_reason(serve_http: str, tmp_path: Path) -> None:
    from ray import serve

    from ocrjobs.serve.app import build_app

    detector, crnn, _ = write_tiny_models(tmp_path)
    tiny = {"num_cpus": 0.01}
    args = {"detector": {"model": detector, **tiny}, "members": [{"model": crnn, **tiny}], "ingress": tiny}
    serve.run(build_app(args), name="noformulas", route_prefix="/noformulas")
    try:
        response = httpx.post(
            f"{serve_http}/noformulas/v1/latex",
            content=_encode(render_lines(["x"])),
            headers={"Content-Type": "image/png"},
            timeout=60,
        )
        assert response.status_code == 404 and response.json()["error"] == "not_configured"
    finally:
        serve.delete("noformulas")


PARITY_RECEIPTS = ["sroie-dev-001.jpg", "sroie-dev-073.jpg", "sroie-dev-313.jpg"]


def test_bulk_stages_pipeline_and_serve_read_the_same_receipts_alike(shipped: str) -> None:
    """Issue 17's parity check: the three hosts run one chain (ocrjobs.pipeline), so on the same
    receipts, one page at a time and with the same models, they give the same lines."""
    import pyarrow as pa

    from ocrjobs.detection.predictor import DetectionPredictor
    from ocrjobs.images import read_image
    from ocrjobs.jobs.bulk_udfs import DECODED_SCHEMA, DetectStage, RecognizeStage
    from ocrjobs.pipeline import ocr_images
    from ocrjobs.recognition.predictor import RecognitionPredictor

    detector_dir, recognizer_dir = REPO_ROOT / "models" / "dbnet_doc", REPO_ROOT / "models" / "crnn_doc"
    detector = DetectionPredictor.from_model_dir(detector_dir)
    recognizer = RecognitionPredictor.from_model_dir(recognizer_dir)
    detect_stage, recognize_stage = DetectStage(str(detector_dir)), RecognizeStage(str(recognizer_dir))

    def rounded(lines: list[dict[str, Any]]) -> list[tuple[str, list[float], float, float]]:
        # Serve writes polygons to 1/100 px; scores may differ by float noise between processes.
        return [
            (
                ln["text"],
                np.asarray(ln["polygon"], np.float64).reshape(-1).round(2).tolist(),
                round(ln["rec_score"], 4),
                round(ln["det_score"], 4),
            )
            for ln in lines
        ]

    for name in PARITY_RECEIPTS:
        path = REPO_ROOT / "samples" / "receipts" / name
        image = read_image(str(path))
        in_process = [ln.to_row() for ln in ocr_images([image], detector, recognizer)[0]]
        decoded = pa.Table.from_pylist(
            [
                {
                    "uri": str(path),
                    "shard": 0,
                    "position": 0,
                    "page": 1,
                    "pages": 1,
                    "width": image.shape[1],
                    "height": image.shape[0],
                    "pixels": image.tobytes(),
                    "t_read": 0.0,
                    "t_decode": 0.0,
                }
            ],
            schema=DECODED_SCHEMA,
        )
        (bulk,) = recognize_stage(detect_stage(decoded)).to_pylist()
        response = httpx.post(
            f"{shipped}/v1/ocr",
            content=path.read_bytes(),
            headers={"Content-Type": "image/jpeg"},
            timeout=120,
        )
        assert response.status_code == 200, response.text
        served = [{**ln, "rec_score": ln["score"]} for ln in response.json()["lines"]]
        assert len(in_process) > 10, name  # a real receipt, read
        assert rounded(bulk["lines"]) == rounded(in_process), name
        assert rounded(served) == rounded(in_process), name
        assert (
            bulk["text"]
            == response.json()["text"]
            == "\n".join(ln["text"] for ln in in_process if ln["text"])
        )
