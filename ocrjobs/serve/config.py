"""Typed configuration of the online OCR service.

Two layers, matching Ray Serve's own config file (``serve run``/``serve deploy`` read it as is):

* :class:`ServeFile` is the whole file: ``http_options`` (host and port of the HTTP proxy) and
  ``applications``, each naming ``import_path: ocrjobs.serve.app:build_app`` and its ``args``;
* :class:`ServeConfig` is those ``args``: the models, one section per deployment (replicas or
  autoscaling, request concurrency, CPUs/GPUs, batching), the input limits and the auth setting.

``build_app`` validates its ``args`` with :meth:`ServeConfig.from_args`, and ``ocrjobs serve`` reads the
file with :func:`read_serve_file`, so the three ways of starting the service share one schema and one
error format (the field is named). ``configs/serve.yaml`` documents every field.

>>> config = ServeConfig.from_args({"members": [{"model": "models/crnn_en"}]})
>>> config.members[0].resolved_name, config.detector.model
('crnn_en', 'models/dbnet_doc')
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, model_validator

from ocrjobs import storage
from ocrjobs.config import ConfigError, StrictModel, read_yaml_mapping
from ocrjobs.config import _format_validation_error as format_validation_error
from ocrjobs.config import _reject_credentials as reject_credentials

__all__ = [
    "APP_IMPORT_PATH",
    "REPLICA_ENV_VARS",
    "AppEntry",
    "AuthConfig",
    "AutoscalingConfig",
    "DetectorConfig",
    "HttpOptions",
    "IngressConfig",
    "LimitsConfig",
    "MemberConfig",
    "ServeConfig",
    "ServeFile",
    "deployment_sections",
    "read_serve_file",
    "size_to_cluster",
    "start_replicas",
]

APP_IMPORT_PATH = "ocrjobs.serve.app:build_app"

REPLICA_ENV_VARS: dict[str, str] = {
    # glibc gives threads that allocate at the same time malloc arenas of their own (up to 8 per core)
    # and keeps what each has freed. Replicas decode images and run models on asyncio.to_thread's pool:
    # over 1,000 SROIE receipts at concurrency 16 the ingress (OcrApi) swung between 579 and 749 MB
    # without the cap and between 515 and 576 MB with it (docs/benchmarks.md, "Serve soak"). The
    # Recognizer's growth was oneDNN's primitive cache, bounded in ocrjobs/__init__.py.
    "MALLOC_ARENA_MAX": "2",
}
"""Environment every replica process gets (a deployment's ``env_vars`` may override each)."""

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class AutoscalingConfig(StrictModel):
    """Ray Serve request-based autoscaling of one deployment.

    Attributes:
        min_replicas: fewest replicas (0 lets an idle deployment scale to zero; the first request then
            waits for a replica to load its model).
        max_replicas: most replicas.
        initial_replicas: replicas at deploy time; ``None``: ``min_replicas``.
        target_ongoing_requests: requests in flight per replica that Serve aims for; more adds
            replicas, fewer removes them. For ``@serve.batch`` deployments keep it near
            ``max_batch_size`` so replicas are added only when batches are already full.
        upscale_delay_s: how long the load must stay above target before replicas are added.
        downscale_delay_s: how long it must stay below before replicas are removed.
    """

    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    initial_replicas: int | None = Field(default=None, ge=0)
    target_ongoing_requests: float = Field(default=2.0, gt=0)
    upscale_delay_s: float = Field(default=30.0, ge=0)
    downscale_delay_s: float = Field(default=600.0, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) > max_replicas ({self.max_replicas})")
        if self.initial_replicas is not None and not (
            self.min_replicas <= self.initial_replicas <= self.max_replicas
        ):
            raise ValueError("initial_replicas must lie between min_replicas and max_replicas")
        return self


class _DeploymentSettings(StrictModel):
    """Settings every deployment has (see the subclasses for defaults).

    Attributes:
        num_replicas: a fixed number of replicas; must be ``null`` when ``autoscaling`` is set.
        autoscaling: request-based autoscaling instead of a fixed count.
        max_ongoing_requests: requests one replica holds at once. Serve routes no more than this to a
            replica, so it caps what ``@serve.batch`` can put in one batch: keep it at least
            ``max_batch_size`` (Serve's default of 5 starves batching, see RAY_NOTES).
        num_cpus: CPUs reserved per replica (fractions allowed); also sets the replica's thread pools
            (Ray gives a replica ``OMP_NUM_THREADS`` = its whole CPUs, at least 1).
        num_gpus: GPUs per replica (fractions share one GPU); models run on ``cuda`` when > 0.
        env_vars: environment variables of the replica processes (a Ray runtime_env), added to
            :data:`REPLICA_ENV_VARS` (a name given here wins). They are visible in Serve's status
            output: never put secrets here; give the replicas' hosts the token environment variable
            instead (see ``auth``).
    """

    num_replicas: int | None = Field(default=1, ge=0)
    autoscaling: AutoscalingConfig | None = None
    max_ongoing_requests: int = Field(default=16, ge=1)
    num_cpus: float = Field(default=1.0, ge=0)
    num_gpus: float = Field(default=0.0, ge=0)
    env_vars: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _replicas_or_autoscaling(self) -> _DeploymentSettings:
        if self.autoscaling is not None and self.num_replicas is not None:
            raise ValueError("set either num_replicas or autoscaling (with num_replicas: null), not both")
        if self.autoscaling is None and self.num_replicas is None:
            raise ValueError("num_replicas is null but no autoscaling section is given")
        return self

    def deployment_options(self) -> dict[str, Any]:
        """Keyword arguments for ``Deployment.options(...)``."""
        actor: dict[str, Any] = {
            "num_cpus": self.num_cpus,
            "num_gpus": self.num_gpus,
            "runtime_env": {"env_vars": {**REPLICA_ENV_VARS, **self.env_vars}},
        }
        options: dict[str, Any] = {
            "max_ongoing_requests": self.max_ongoing_requests,
            "ray_actor_options": actor,
        }
        if self.autoscaling is not None:
            options["autoscaling_config"] = self.autoscaling.model_dump(exclude_none=True)
        else:
            options["num_replicas"] = self.num_replicas
        return options

    @property
    def device(self) -> str:
        """Where the model runs: ``cuda`` when the replica reserves a GPU, else ``cpu``."""
        return "cuda" if self.num_gpus > 0 else "cpu"


class _ModelSettings(_DeploymentSettings):
    """A model deployment: the settings above plus batching and the model folder.

    Attributes:
        model: model folder (``models/<name>`` of the checkout, an absolute path, or ``s3://``). A
            relative path is resolved against each replica's working directory (the ``working_dir``
            of the Serve application, or where ``ocrjobs serve`` was started).
        max_batch_size: most requests ``@serve.batch`` combines into one model call.
        batch_wait_timeout_s: how long a batch waits for more requests after its first one. Longer
            fills batches under load; it adds at most this much latency to a lone request.
        model_batch_size: items per forward pass inside a model call (``null``: the model folder's
            setting / the predictor's default).
        amp: autocast (float16/bfloat16) on GPUs.
        backend: ``auto`` (ONNX Runtime for detectors and CTC recognizers on CPU), ``torch`` or
            ``onnxruntime`` (:mod:`ocrjobs.backends`).
        onnx_providers: ONNX Runtime execution providers in order of preference (``null``: CPU, with
            CUDA first on GPU replicas), e.g. ``[CUDAExecutionProvider, CPUExecutionProvider]``.
        torch_threads: intra-op threads of the replica's torch and ONNX Runtime (``null``: leave Ray's
            default).
    """

    model: str
    max_batch_size: int = Field(default=8, ge=1)
    batch_wait_timeout_s: float = Field(default=0.01, ge=0)
    model_batch_size: int | None = Field(default=None, ge=1)
    amp: bool = False
    backend: Literal["auto", "torch", "onnxruntime", "onnxruntime-int8"] = "auto"
    onnx_providers: list[str] | None = None
    torch_threads: int | None = Field(default=None, ge=1)

    def predictor_overrides(self) -> dict[str, Any]:
        """The ``from_model_dir`` overrides of this deployment's predictor (what replicas load)."""
        from ocrjobs.pipeline import predictor_overrides

        return predictor_overrides(self.amp, self.backend, self.onnx_providers, self.model_batch_size)

    @model_validator(mode="after")
    def _batches_fit(self) -> _ModelSettings:
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) < max_batch_size "
                f"({self.max_batch_size}): a replica would never hold a full batch"
            )
        return self


class DetectorConfig(_ModelSettings):
    """The ``Detector`` deployment (text line detection, then crops cut from each polygon).

    Attributes:
        model: detection model folder.
        limit_side: longest image side the detector sees (``null``: the model folder's setting).
    """

    model: str = "models/dbnet_doc"
    limit_side: int | None = Field(default=None, ge=32)
    max_batch_size: int = Field(default=4, ge=1)
    batch_wait_timeout_s: float = Field(default=0.02, ge=0)
    max_ongoing_requests: int = Field(default=8, ge=1)

    def predictor_overrides(self) -> dict[str, Any]:
        """The detector's ``from_model_dir`` overrides, ``limit_side`` included when set."""
        overrides = super().predictor_overrides()
        if self.limit_side is not None:
            overrides["limit_side"] = self.limit_side
        return overrides


class MemberConfig(_ModelSettings):
    """One ensemble member: a ``Recognizer`` deployment named ``Recognizer_<name>``.

    Attributes:
        model: recognition model folder.
        name: the member's name in responses and its deployment's name; ``null``: the folder's name.
        decoder: ``greedy`` or ``beam`` proposals (``null``: the model folder's setting).
        beam_width: beams for ``decoder: beam`` (``null``: the folder's setting).
        weight: the member's weight in the ensemble's mean score (``ocrjobs.recognition.ensemble.combine``;
            fit them on held-out data with ``benchmarks/fit_ensemble_weights.py``). 0: the member
            proposes candidates but does not vote.
    """

    name: str | None = None
    weight: float = Field(default=1.0, ge=0)
    decoder: Literal["greedy", "beam"] | None = None
    beam_width: int | None = Field(default=None, ge=1)
    max_batch_size: int = Field(default=16, ge=1)
    batch_wait_timeout_s: float = Field(default=0.01, ge=0)
    max_ongoing_requests: int = Field(default=32, ge=1)

    @model_validator(mode="after")
    def _valid_name(self) -> MemberConfig:
        if not _NAME.match(self.resolved_name):
            raise ValueError(
                f"member name {self.resolved_name!r} may only hold letters, digits, '_', '.' and '-' "
                "(set name: explicitly)"
            )
        return self

    @property
    def resolved_name(self) -> str:
        """``name``, or the model folder's name."""
        return self.name or storage.basename(self.model.rstrip("/"))

    def predictor_overrides(self) -> dict[str, Any]:
        """Predictor settings this config changes (``RecognitionPredictor.from_model_dir`` overrides)."""
        overrides = super().predictor_overrides()
        for key in ("decoder", "beam_width"):
            if getattr(self, key) is not None:
                overrides[key] = getattr(self, key)
        return overrides


class IngressConfig(_DeploymentSettings):
    """The ``OcrApi`` deployment: HTTP parsing, image decoding and the ensemble rounds (no model).

    It mostly awaits the model deployments, so one replica takes many requests at once; its CPU use
    is decoding the uploaded images.

    Attributes:
        max_ongoing_requests: requests one replica holds at once. Serve's proxy queues every request
            beyond it, ``/healthz`` included, so image requests may take only
            ``max_ongoing_requests - reserved_requests`` of them (more get 503 at once).
        reserved_requests: slots the image routes never take: ``/healthz``, ``/v1/models`` and
            ``/v1/stats`` always find a free one, however many uploads are open.
    """

    num_cpus: float = Field(default=0.25, ge=0)
    max_ongoing_requests: int = Field(default=256, ge=1)
    reserved_requests: int = Field(default=16, ge=1)

    @model_validator(mode="after")
    def _room_for_images(self) -> IngressConfig:
        if self.reserved_requests >= self.max_ongoing_requests:
            raise ValueError(
                f"reserved_requests ({self.reserved_requests}) must be below max_ongoing_requests "
                f"({self.max_ongoing_requests}): nothing would be left for image requests"
            )
        return self

    @property
    def max_image_requests(self) -> int:
        """Image requests (``/v1/ocr``, ``/v1/recognize``, ``/v1/latex``) one replica takes at once."""
        return self.max_ongoing_requests - self.reserved_requests


class LimitsConfig(StrictModel):
    """What a request may contain, and how slowly it may arrive.

    Attributes:
        max_body_bytes: largest request body; larger ones get 413, decided from ``Content-Length``
            before the body is read (a body without one is read only up to the limit).
        max_pixels: largest ``width * height``; checked from the image header before any pixel
            buffer is allocated (decompression bombs get 413 without being decoded). Also the limit
            of each rendered PDF page (a page over it is that page's error in the answer).
        max_pdf_pages: most pages of a PDF uploaded to ``POST /v1/ocr`` (413 ``too_many_pages``
            beyond, before any page is rendered).
        pdf_dpi: resolution PDF pages are rendered at (as the bulk job's ``documents.dpi``).
        max_header_bytes: largest total size of the request's header lines (names, values and their
            separators); larger ones get 431 on every route.
        body_timeout_s: the whole body must arrive within this many seconds of the ingress starting
            to read it, else 408.
        body_min_bytes_per_s: after ``body_grace_s``, the body must keep arriving at this mean rate
            (bytes received / seconds since reading began), else 408 at once; a client that stalls
            is answered when its mean rate falls below it. 0 turns the rate check off.
        body_grace_s: seconds from the start of the read during which the rate is not checked
            (connection set-up, a slow first packet).
    """

    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    max_pixels: int = Field(default=40_000_000, ge=1)
    max_pdf_pages: int = Field(default=20, ge=1)
    pdf_dpi: float = Field(default=150.0, gt=0, le=1200)
    max_header_bytes: int = Field(default=16 * 1024, ge=1024)
    body_timeout_s: float = Field(default=60.0, gt=0)
    body_min_bytes_per_s: float = Field(default=1024.0, ge=0)
    body_grace_s: float = Field(default=10.0, ge=0)

    def body_wait_s(self, received: int, elapsed: float) -> float:
        """How long the ingress may wait for the next chunk of a body before answering 408.

        Args:
            received: body bytes received so far.
            elapsed: seconds since the read began.

        Returns:
            Seconds until the body deadline or until the mean rate falls below
            ``body_min_bytes_per_s`` (after the grace period), whichever comes first; ``<= 0``: too
            slow already.

        >>> LimitsConfig(body_timeout_s=60, body_min_bytes_per_s=1000, body_grace_s=5).body_wait_s(8000, 2)
        6.0
        """
        until = self.body_timeout_s
        if self.body_min_bytes_per_s > 0:
            # rate = received / t >= min  <=>  t <= received / min; never before the grace ends.
            until = min(until, max(self.body_grace_s, received / self.body_min_bytes_per_s))
        return until - elapsed


class AuthConfig(StrictModel):
    """Optional bearer-token check.

    Attributes:
        token_env: name of the environment variable holding the token. When that variable is set and
            non-empty in the ingress replicas' environment, every ``/v1/*`` request must send
            ``Authorization: Bearer <token>`` (else 401); ``/healthz`` and the OpenAPI schema stay open.
            ``null`` turns the check off whatever the environment holds. The token itself is never a
            config value.
    """

    token_env: str | None = "OCRJOBS_SERVE_TOKEN"


class ServeConfig(StrictModel):
    """The ``args`` of the ``ocrjobs.serve.app:build_app`` application.

    Attributes:
        detector: the ``Detector`` deployment.
        members: the ensemble members, one ``Recognizer`` deployment each (at least one; with one,
            responses are that model's reading and the scoring round is skipped).
        formulas: formula (image -> LaTeX) members, one ``Formula_<name>`` deployment each, combined by
            the same ensemble for ``POST /v1/latex`` (e.g. one model at two input sizes: multi-scale).
            Empty: ``/v1/latex`` answers 404 ``not_configured``.
        ingress: the ``OcrApi`` deployment.
        limits: request limits.
        auth: the bearer-token check.
    """

    detector: DetectorConfig = Field(default_factory=DetectorConfig)
    members: list[MemberConfig] = Field(
        default_factory=lambda: [MemberConfig(model="models/crnn_doc")], min_length=1
    )
    formulas: list[MemberConfig] = Field(default_factory=list)
    ingress: IngressConfig = Field(default_factory=IngressConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)

    @model_validator(mode="after")
    def _someone_votes(self) -> ServeConfig:
        for section in ("members", "formulas"):
            members = getattr(self, section)
            if members and not any(m.weight > 0 for m in members):
                raise ValueError(f"{section}: at least one member needs a weight above 0")
        return self

    @model_validator(mode="after")
    def _unique_members(self) -> ServeConfig:
        for section in ("members", "formulas"):
            names = [m.resolved_name for m in getattr(self, section)]
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:
                raise ValueError(f"{section} names must be unique (set name: on each), repeated: {repeated}")
        return self

    @classmethod
    def from_args(cls, args: Any, where: str = "serve application args") -> ServeConfig:
        """Validate application ``args`` (a dict, or a :class:`ServeConfig` as is).

        Args:
            args: the ``args`` mapping of the Serve config file (or ``None`` for the defaults).
            where: names the source in error messages.

        Returns:
            The validated config.

        Raises:
            ConfigError: an unknown or invalid field (named in the message), or a credential-like field.
        """
        if isinstance(args, ServeConfig):
            return args
        data = dict(args or {})
        reject_credentials(data, where)
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise ConfigError(format_validation_error(err, where)) from None


class HttpOptions(StrictModel):
    """``http_options`` of the Serve config file (Ray's ``HTTPOptions``; other keys pass through).

    Attributes:
        host: address the HTTP proxy binds; ``127.0.0.1`` keeps the service local. Use ``0.0.0.0``
            only behind a network policy or gateway (a KubeRay cluster sets it in its manifest).
        port: HTTP port.
    """

    model_config = ConfigDict(extra="allow")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)


class AppEntry(StrictModel):
    """One entry of ``applications`` (Serve's application schema; other keys pass through).

    Attributes:
        name: the application name.
        route_prefix: URL prefix of the application's routes (``/``: ``/v1/ocr`` at the root).
        import_path: the builder, ``ocrjobs.serve.app:build_app`` for this service.
        args: the builder's arguments (:class:`ServeConfig`).
    """

    model_config = ConfigDict(extra="allow")

    name: str = "ocr"
    route_prefix: str = "/"
    import_path: str = APP_IMPORT_PATH
    args: dict[str, Any] = Field(default_factory=dict)


class ServeFile(StrictModel):
    """A Ray Serve config file (``serve run``/``serve deploy`` format).

    Attributes:
        http_options: host and port of the HTTP proxy.
        applications: the applications; ``ocrjobs serve`` runs the one whose ``import_path`` is
            :data:`APP_IMPORT_PATH`.
    """

    model_config = ConfigDict(extra="allow")

    http_options: HttpOptions = Field(default_factory=HttpOptions)
    applications: list[AppEntry] = Field(default_factory=lambda: [AppEntry()], min_length=1)

    def ocr_app(self) -> AppEntry:
        """The application built by :data:`APP_IMPORT_PATH`.

        Raises:
            ConfigError: no application (or more than one) uses it.
        """
        ours = [a for a in self.applications if a.import_path == APP_IMPORT_PATH]
        if len(ours) != 1:
            raise ConfigError(
                f"expected exactly one application with import_path {APP_IMPORT_PATH}, found {len(ours)}"
            )
        return ours[0]


def _apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys in nested dicts and lists: ``limits.max_pixels``, ``members.0.decoder``.

    ``None`` values are skipped (an unset CLI flag); a list index may be one past the end to append.
    """
    for dotted, value in overrides.items():
        if value is None:
            continue
        parts = dotted.split(".")
        node: Any = data
        for k, part in enumerate(parts):
            last = k == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) > len(node):
                    raise ConfigError(
                        f"override {dotted!r}: {part!r} is not an index of a {len(node)}-item list"
                    )
                index = int(part)
                if index == len(node):
                    node.append(value if last else {})
                elif last:
                    node[index] = value
                node = node[index]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, [] if parts[k + 1].isdigit() else {})
            else:
                raise ConfigError(f"override {dotted!r}: {'.'.join(parts[:k])!r} is not a section")
    return data


def read_serve_file(
    path: str | Path | None, overrides: dict[str, Any] | None = None
) -> tuple[ServeFile, AppEntry, ServeConfig]:
    """Read a Serve config file and validate the OCR application's ``args``.

    A file without ``applications`` is taken as the ``args`` alone (a plain :class:`ServeConfig`).

    Args:
        path: the YAML file, or ``None`` for the defaults.
        overrides: dotted field paths inside ``args`` (``--set limits.max_pixels=1e7``).

    Returns:
        ``(file, the OCR application entry, its validated args)``; the entry's ``args`` include the
        overrides.

    Raises:
        ConfigError: the file is missing or not YAML, or a field is invalid (the message names it).
    """
    where = str(path) if path is not None else "<defaults>"
    data = read_yaml_mapping(path) if path is not None else {}
    if data and "applications" not in data:
        data = {"applications": [{"args": data}]}
    reject_credentials(data, where)
    try:
        file = ServeFile.model_validate(data)
        app = file.ocr_app()
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, where)) from None
    if overrides:
        app.args = _apply_overrides(copy.deepcopy(app.args), overrides)
        where = f"{where} (with overrides {sorted(k for k, v in overrides.items() if v is not None)})"
    config = ServeConfig.from_args(app.args, where=f"{where}: application {app.name!r} args")
    return file, app, config


# ------------------------------------------------------------------------------ sizing to the cluster


def deployment_sections(config: ServeConfig) -> list[tuple[str, str, _DeploymentSettings]]:
    """``(deployment name, its config field, its settings)`` for every deployment ``build_app`` creates.

    >>> [(name, field) for name, field, _ in deployment_sections(ServeConfig())]
    [('OcrApi', 'ingress'), ('Detector', 'detector'), ('Recognizer_crnn_doc', 'members.0')]
    """
    sections: list[tuple[str, str, _DeploymentSettings]] = [
        ("OcrApi", "ingress", config.ingress),
        ("Detector", "detector", config.detector),
    ]
    sections += [(f"Recognizer_{m.resolved_name}", f"members.{i}", m) for i, m in enumerate(config.members)]
    sections += [(f"Formula_{m.resolved_name}", f"formulas.{i}", m) for i, m in enumerate(config.formulas)]
    return sections


def start_replicas(section: _DeploymentSettings) -> int:
    """Replicas a deployment starts with: ``num_replicas``, or autoscaling's initial (else min) count."""
    if section.autoscaling is not None:
        scaling = section.autoscaling
        return scaling.initial_replicas if scaling.initial_replicas is not None else scaling.min_replicas
    return section.num_replicas or 0


def _floor(value: float, step: float = 0.01) -> float:
    return max(step, int(value / step + 1e-9) * step) if value > 0 else 0.0


def size_to_cluster(config: ServeConfig, nodes: Sequence[Any]) -> tuple[ServeConfig, list[str]]:
    """Scale the deployments' ``num_cpus``/``num_gpus`` down so that their start-up replicas fit the cluster.

    Like the bulk job (:func:`ocrjobs.jobs.bulk.resolve_resources`), sizes come from the nodes, not from
    asking Ray to wait: the CPUs all replicas reserve at start (``num_replicas``, or the autoscaling
    ``initial_replicas``/``min_replicas``) are scaled by one factor, keeping their ratios, so that their
    sum is at most the cluster's CPUs, and no replica asks more than the largest node has. GPUs are
    scaled the same way against the cluster's GPUs; on a cluster without GPUs they are dropped (the models
    then run on the CPU). A config that already fits is returned unchanged.

    Args:
        config: the service's config.
        nodes: the alive nodes (:func:`ocrjobs.raycluster.alive_nodes`; anything with ``cpus``/``gpus``).

    Returns:
        ``(a sized copy, one line per changed field)`` (no lines when nothing changed).

    >>> from ocrjobs.raycluster import NodeResources
    >>> sized, notes = size_to_cluster(ServeConfig(), [NodeResources("n", "127.0.0.1", cpus=2.0)])
    >>> sized.ingress.num_cpus + sized.detector.num_cpus + sized.members[0].num_cpus <= 2.0
    True
    """
    sized = config.model_copy(deep=True)
    notes: list[str] = []
    for resource, attr in (("CPU", "num_cpus"), ("GPU", "num_gpus")):
        total = sum(getattr(n, attr.removeprefix("num_")) for n in nodes)
        largest = max((getattr(n, attr.removeprefix("num_")) for n in nodes), default=0.0)
        sections = deployment_sections(sized)
        asked = sum(getattr(s, attr) * start_replicas(s) for _, _, s in sections)
        if asked <= 0 or (resource == "CPU" and total <= 0):  # no CPU node yet: an autoscaler adds them
            continue
        # GPUs asked of a cluster without any are dropped; a little headroom below the exact sum
        # otherwise (Ray's fractional resources are fixed-point).
        factor = 0.0 if resource == "GPU" and total <= 0 else min(1.0, total * 0.999 / asked)
        for name, _, section in sections:
            before = getattr(section, attr)
            after = min(before * factor, largest) if factor > 0 else 0.0
            after = _floor(after) if after > 0 else 0.0
            if after < before - 1e-9:
                setattr(section, attr, after)
                notes.append(f"{name}.{attr}: {before:g} -> {after:g}")
    return sized, notes
