"""ServeConfig and the Serve config files we ship: validation, overrides, deployment options, the CLI's
``--check`` (no Ray is started here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ocrjobs import cli
from ocrjobs.config import ConfigError
from ocrjobs.serve.config import (
    APP_IMPORT_PATH,
    REPLICA_ENV_VARS,
    LimitsConfig,
    ServeConfig,
    read_serve_file,
)
from tests.conftest import REPO_ROOT

SERVE_YAML = REPO_ROOT / "configs" / "serve.yaml"
RAYSERVICE = REPO_ROOT / "cluster" / "serve-rayservice.yaml"


def test_the_shipped_serve_yaml_is_a_serve_config_file_for_our_builder() -> None:
    file, app, config = read_serve_file(SERVE_YAML)
    assert (file.http_options.host, file.http_options.port) == ("127.0.0.1", 8000)
    assert (app.import_path, app.route_prefix) == (APP_IMPORT_PATH, "/")
    assert config.detector.model == "models/dbnet_doc"
    assert [m.model for m in config.members] == ["models/crnn_doc"]
    assert config.auth.token_env == "OCRJOBS_SERVE_TOKEN"
    # The second member is there, commented out, until its model is trained.
    assert "# - {model: models/crnn_res40, weight:" in SERVE_YAML.read_text()
    # Its resources fit the 2-CPU development machine even with the second member enabled.
    reserved = config.ingress.num_cpus + config.detector.num_cpus + 2 * config.members[0].num_cpus
    assert reserved <= 2.0
    for section in [config.detector, *config.members]:
        assert section.max_ongoing_requests >= section.max_batch_size > 1
    # /v1/latex combines the formula folders exactly as `ocrjobs bulk --task latex` does by default.
    from ocrjobs.jobs.bulk_config import FORMULA_ENSEMBLE, FORMULA_ENSEMBLE_WEIGHTS

    assert [(m.model, m.weight) for m in config.formulas] == list(
        zip(FORMULA_ENSEMBLE, FORMULA_ENSEMBLE_WEIGHTS, strict=True)
    )
    # As shipped (one line member), everything together fits the 2-CPU machine without scaling down.
    shipped = config.ingress.num_cpus + config.detector.num_cpus
    shipped += sum(m.num_cpus for m in [*config.members, *config.formulas])
    assert shipped <= 2.0


def test_the_rayservice_manifest_carries_a_valid_config() -> None:
    manifest = yaml.safe_load(RAYSERVICE.read_text())
    assert manifest["kind"] == "RayService"
    serve_config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    (app,) = serve_config["applications"]
    assert app["import_path"] == APP_IMPORT_PATH
    config = ServeConfig.from_args(app["args"])
    assert len(config.members) == 2 and {m.resolved_name for m in config.members} == {"crnn_en", "aster_en"}
    assert config.detector.device == "cuda" and all(m.device == "cuda" for m in config.members)
    assert config.detector.autoscaling is not None and config.detector.num_replicas is None


def test_defaults_and_deployment_options() -> None:
    config = ServeConfig.from_args({})
    assert [m.resolved_name for m in config.members] == ["crnn_doc"]
    options = config.detector.deployment_options()
    assert options["num_replicas"] == 1 and "autoscaling_config" not in options
    assert options["ray_actor_options"] == {
        "num_cpus": config.detector.num_cpus,
        "num_gpus": 0.0,
        "runtime_env": {"env_vars": {"MALLOC_ARENA_MAX": "2"}},
    }
    scaled = ServeConfig.from_args(
        {
            "detector": {
                "num_replicas": None,
                "autoscaling": {"min_replicas": 0, "max_replicas": 3, "target_ongoing_requests": 4},
                "num_gpus": 0.5,
                "env_vars": {"OMP_NUM_THREADS": "2"},
            }
        }
    ).detector
    options = scaled.deployment_options()
    assert "num_replicas" not in options
    assert options["autoscaling_config"]["max_replicas"] == 3
    assert options["autoscaling_config"]["target_ongoing_requests"] == 4
    assert options["ray_actor_options"]["runtime_env"] == {
        "env_vars": {"MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "2"}
    }
    assert scaled.device == "cuda"


def test_every_replica_gets_two_malloc_arenas_unless_its_env_vars_say_otherwise() -> None:
    # Without the cap each thread that allocates may get an arena of its own, and replicas grew
    # (docs/benchmarks.md, "Serve soak").
    config = ServeConfig.from_args({"members": [{"model": "m1"}], "formulas": [{"model": "f1"}]})
    sections = [config.detector, config.ingress, *config.members, *config.formulas]
    for section in sections:
        env = section.deployment_options()["ray_actor_options"]["runtime_env"]["env_vars"]
        assert env == REPLICA_ENV_VARS == {"MALLOC_ARENA_MAX": "2"}
    custom = ServeConfig.from_args({"ingress": {"env_vars": {"MALLOC_ARENA_MAX": "4"}}}).ingress
    assert custom.deployment_options()["ray_actor_options"]["runtime_env"] == {
        "env_vars": {"MALLOC_ARENA_MAX": "4"}
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"detector": {"max_batch_sise": 4}}, "field 'detector.max_batch_sise': unknown field"),
        ({"members": []}, "field 'members'"),
        ({"members": [{"decoder": "greedy"}]}, "field 'members.0.model'"),
        ({"members": [{"model": "a/x"}, {"model": "b/x"}]}, "members names must be unique"),
        ({"members": [{"model": "m", "name": "no spaces"}]}, "may only hold letters"),
        ({"members": [{"model": "m", "decoder": "sampling"}]}, "field 'members.0.decoder'"),
        ({"detector": {"autoscaling": {"max_replicas": 2}}}, "either num_replicas or autoscaling"),
        ({"detector": {"num_replicas": None}}, "no autoscaling section"),
        (
            {"detector": {"num_replicas": None, "autoscaling": {"min_replicas": 3, "max_replicas": 2}}},
            "min_replicas (3) > max_replicas (2)",
        ),
        ({"detector": {"max_ongoing_requests": 2, "max_batch_size": 4}}, "never hold a full batch"),
        ({"limits": {"max_pixels": 0}}, "field 'limits.max_pixels'"),
        ({"limits": {"max_header_bytes": 100}}, "field 'limits.max_header_bytes'"),
        ({"limits": {"body_timeout_s": 0}}, "field 'limits.body_timeout_s'"),
        ({"limits": {"body_min_bytes_per_s": -1}}, "field 'limits.body_min_bytes_per_s'"),
        ({"limits": {"body_grace_s": -1}}, "field 'limits.body_grace_s'"),
        (
            {"ingress": {"max_ongoing_requests": 16, "reserved_requests": 16}},
            "reserved_requests (16) must be below max_ongoing_requests (16)",
        ),
        ({"auth": {"token": "abc"}}, "looks like a credential"),
    ],
)
def test_invalid_args_name_the_field(args: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        ServeConfig.from_args(args)
    assert message in str(info.value)


def test_slow_client_defaults_and_the_shipped_file_agree() -> None:
    _, _, shipped = read_serve_file(SERVE_YAML)
    default = ServeConfig.from_args({})
    assert shipped.limits == default.limits
    limits = default.limits
    assert (limits.max_header_bytes, limits.body_timeout_s) == (16 * 1024, 60.0)
    assert (limits.body_min_bytes_per_s, limits.body_grace_s) == (1024.0, 10.0)
    for ingress in (shipped.ingress, default.ingress):
        assert (ingress.max_ongoing_requests, ingress.reserved_requests) == (256, 16)
        assert ingress.max_image_requests == 240
        assert ingress.deployment_options()["max_ongoing_requests"] == 256
    # The manifest's ingress keeps its own max_ongoing_requests and the default reserve.
    manifest = yaml.safe_load(RAYSERVICE.read_text())
    (app,) = yaml.safe_load(manifest["spec"]["serveConfigV2"])["applications"]
    assert ServeConfig.from_args(app["args"]).ingress.max_image_requests == 128 - 16


@pytest.mark.parametrize(
    ("received", "elapsed", "wait"),
    [
        (0, 0.0, 5.0),  # nothing yet: the grace period
        (100, 4.0, 1.0),  # still in the grace period
        (100, 5.0, 0.0),  # a stalled client: answered when the grace ends
        (8_000, 2.0, 6.0),  # 8000 bytes at 1000 bytes/s last until t = 8 s
        (8_000, 9.0, -1.0),  # under the minimum rate already
        (10**6, 30.0, 30.0),  # fast, but the whole-body deadline still holds
        (10**6, 61.0, -1.0),
    ],
)
def test_body_wait_ends_at_the_deadline_or_when_the_rate_falls_under_the_minimum(
    received: int, elapsed: float, wait: float
) -> None:
    limits = LimitsConfig(body_timeout_s=60, body_min_bytes_per_s=1000, body_grace_s=5)
    assert limits.body_wait_s(received, elapsed) == pytest.approx(wait)


def test_a_zero_minimum_rate_leaves_only_the_deadline() -> None:
    limits = LimitsConfig(body_timeout_s=60, body_min_bytes_per_s=0, body_grace_s=5)
    assert limits.body_wait_s(0, 30.0) == pytest.approx(30.0)
    assert limits.body_wait_s(0, 60.0) <= 0


def test_overrides_reach_nested_sections_and_list_items(tmp_path: Path) -> None:
    _, app, config = read_serve_file(
        SERVE_YAML,
        {
            "members.0.decoder": "beam",
            "members.1.model": "models/aster_en",
            "limits.max_pixels": 1000,
            "detector.num_cpus": None,  # an unset flag changes nothing
        },
    )
    assert (
        config.members[0].decoder == "beam" and config.members[0].predictor_overrides()["decoder"] == "beam"
    )
    assert [m.resolved_name for m in config.members] == ["crnn_doc", "aster_en"]
    assert config.limits.max_pixels == 1000 and config.detector.num_cpus == 0.8
    assert app.args["limits"]["max_pixels"] == 1000
    # The file itself is untouched by overrides.
    assert read_serve_file(SERVE_YAML)[2].limits.max_pixels == 40_000_000
    with pytest.raises(ConfigError, match="not an index"):
        read_serve_file(SERVE_YAML, {"members.5.model": "x"})


def test_a_file_of_args_alone_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "args.yaml"
    path.write_text("members:\n  - model: models/m1\n  - {model: models/m2, decoder: beam}\n")
    file, app, config = read_serve_file(path)
    assert file.http_options.host == "127.0.0.1" and app.import_path == APP_IMPORT_PATH
    assert [m.resolved_name for m in config.members] == ["m1", "m2"]


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        read_serve_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("applications:\n  - import_path: other.module:app\n")
    with pytest.raises(ConfigError, match="exactly one application"):
        read_serve_file(bad)
    bad.write_text("http_options: {port: 99999}\napplications: [{}]\n")
    with pytest.raises(ConfigError, match=r"http_options\.port"):
        read_serve_file(bad)


def test_build_app_binds_one_recognizer_per_member_without_ray() -> None:
    from ray.serve import Application

    from ocrjobs.serve.app import build_app

    app = build_app({"members": [{"model": "models/crnn_en"}, {"model": "models/aster_en"}]})
    assert isinstance(app, Application)
    with pytest.raises(ConfigError, match=r"members\.0\.model"):
        build_app({"members": [{}]})


def _tiny_models(root: Path) -> tuple[str, str]:
    from ocrjobs.detection.dbnet import build_detector
    from ocrjobs.detection.predictor import DetectionPredictor
    from ocrjobs.recognition.models import build_recognizer
    from ocrjobs.recognition.predictor import RecognitionPredictor
    from ocrjobs.recognition.tokenizer import CTCTokenizer

    detector = DetectionPredictor(
        build_detector("dbnet_mobilenetv3", neck_channels=16), name="d", version="1"
    )
    tokenizer = CTCTokenizer()
    model = build_recognizer("crnn_small", tokenizer.num_classes, channels=(8, 8, 8, 8), hidden=8)
    recognizer = RecognitionPredictor(model, tokenizer, name="r", version="2")
    return detector.save_model_dir(root / "det"), recognizer.save_model_dir(root / "rec")


def test_cli_check_loads_every_model_without_starting_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    det, rec = _tiny_models(tmp_path / "models")
    config = tmp_path / "serve.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "http_options": {"host": "127.0.0.1", "port": 8123},
                "applications": [
                    {"name": "ocr", "route_prefix": "/", "import_path": APP_IMPORT_PATH, "args": {}}
                ],
            }
        )
    )
    # Relative model paths resolve against the working directory.
    monkeypatch.chdir(tmp_path)
    code = cli.main(
        [
            "serve",
            "--config",
            str(config),
            "--check",
            "--set",
            "detector.model=models/det",
            "--set",
            "members.0.model=models/rec",
            "--port",
            "9001",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "Detector: d@1" in out and "Recognizer_rec: r@2 crnn_small (ctc, greedy" in out
    assert "http://127.0.0.1:9001/" in out
    assert str(Path(det).resolve()) in out and str(Path(rec).resolve()) in out


def test_cli_reports_config_and_model_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "--config", str(SERVE_YAML), "--check", "--set", "limits.max_pixel=3"]) == 2
    assert "field 'limits.max_pixel': unknown field" in capsys.readouterr().err
    missing = str(tmp_path / "nowhere")
    code = cli.main(["serve", "--check", "--set", f"detector.model={missing}"])
    assert code == 1
    assert "nowhere" in capsys.readouterr().err


def test_cli_check_refuses_a_line_model_as_a_formula_member(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    det, rec = _tiny_models(tmp_path / "models")
    args = ["serve", "--check", "--set", f"detector.model={det}", "--set", f"members.0.model={rec}"]
    assert cli.main([*args, "--set", f"formulas=[{{model: {rec}}}]"]) != 0
    assert (
        "holds a text-line model (characters); it cannot be used to read formulas" in capsys.readouterr().err
    )


def test_the_ingress_ranks_with_the_language_model_of_the_first_member_decoding_by_beam(
    tmp_path: Path,
) -> None:
    # The Recognizer replica hands its language model over (Recognizer.fusion); the ingress asks only
    # the first member whose decoder is beam search, once, and ranks the ensemble's candidates with it.
    import asyncio

    from ocrjobs.recognition.ensemble import Fusion
    from ocrjobs.recognition.lm import CharNgramLM
    from ocrjobs.recognition.models import build_recognizer
    from ocrjobs.recognition.predictor import RecognitionPredictor
    from ocrjobs.recognition.tokenizer import CTCTokenizer
    from ocrjobs.serve.app import HandleMember, OcrApi, Recognizer

    tokenizer = CTCTokenizer()
    model = build_recognizer("crnn_small", tokenizer.num_classes, channels=(8, 8, 8, 8), hidden=8)
    lm = CharNgramLM.fit(["TOTAL 12.50", "CASH"], tokenizer.charset.chars, order=3)
    folder = RecognitionPredictor(
        model, tokenizer, decoder="beam", lm=lm, lm_weight=0.3, length_bonus=1.0, name="lm_tiny"
    ).save_model_dir(tmp_path / "lm_tiny")
    replica = Recognizer.func_or_class({"model": str(folder), "num_cpus": 0.1})
    settings = replica.fusion()
    assert settings is not None and (settings["weight"], settings["bonus"]) == (0.3, 1.0)
    greedy = Recognizer.func_or_class({"model": str(folder), "num_cpus": 0.1, "decoder": "greedy"})
    assert greedy.fusion() is None

    class _Method:
        def __init__(self, value: object) -> None:
            self.value, self.calls = value, 0

        def remote(self) -> object:
            self.calls += 1

            async def get() -> object:
                return self.value

            return get()

    class _Handle:
        def __init__(self, value: object) -> None:
            self.fusion = _Method(value)

    members = [HandleMember(n, _Handle(settings)) for n in ("greedy", "first", "second")]  # type: ignore[arg-type]
    infos = [{"decoder": "greedy"}, {"decoder": "beam"}, {"decoder": "beam"}]
    asyncio.run(OcrApi.func_or_class._fetch_fusion(members, infos))
    assert [m.handle.fusion.calls for m in members] == [0, 1, 0]  # type: ignore[attr-defined]
    assert members[0].fusion is None and members[2].fusion is None
    fusion = members[1].fusion
    assert fusion is not None and (fusion.weight, fusion.bonus) == (0.3, 1.0)
    assert fusion.term("CASH") == pytest.approx(Fusion(lm, 0.3, 1.0).term("CASH"))
