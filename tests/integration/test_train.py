"""Distributed training on the session's local Ray (2 CPUs) with runs and data on the moto S3 server.

One CRNN run (the real recognition task, tiny model) on a tiny SROIE slice (receipts scaled down, written
to S3) trains 2 epochs with 2 DDP workers over gloo, batches grouped by line width, a mid-epoch resume
point written after every step (``checkpoint.every_minutes`` tiny), and rank 1 kills itself with
``os._exit(1)`` at the second step of epoch 2 on the first attempt. The tests check, on that one run (each
Ray Train start costs tens of seconds on 2 cores): the validation loss drops and checkpoints and
``metrics.csv`` land on S3; the worker group restarted from the resume point inside epoch 2, trained
exactly the steps left and every epoch is recorded once; re-running
the finished run through ``ocrjobs train`` (with 1 worker) resumes without repeating an epoch; the
exported model folder's predictor gives exactly the checkpoint model's outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from ocrjobs import storage
from ocrjobs.cli import main
from ocrjobs.config import load_config
from ocrjobs.data.formats import load_records, write_sroie
from ocrjobs.data.records import Record, Region
from ocrjobs.images import encode_jpeg, read_image, resize_keep_aspect
from ocrjobs.training.checkpoint import CONFIG_FILE, RESUME_FILE, list_checkpoints
from ocrjobs.training.config import TrainConfig
from ocrjobs.training.loop import CRASH_MARKER
from ocrjobs.training.progress import MetricsLog
from ocrjobs.training.trainer import TrainingOutcome
from tests.conftest import S3Server

pytestmark = pytest.mark.usefixtures("ray_session")

# Receipts scaled so their longer side is this: lines stay legible, decoding stays instant.
_PAGE_SIDE = 640

_RECOGNITION_YAML = """\
name: rec-tiny
task: recognition
model:
  arch: crnn_small
  arch_kwargs: {{channels: [16, 32, 48, 64], hidden: 32}}
  preprocess: {{height: 32, width: 128}}
  charset: {{name: printable}}
data:
  train:
    sources: [{{uri: {data}/train, format: sroie}}]
    synthetic: [{{kind: lines, count: 32}}]
  val:
    sources: [{{uri: {data}/dev, format: sroie}}]
    limit: 2
  prep_num_cpus: 0.5
  group_by_width: 2
scaling: {{num_workers: 2, cpus_per_worker: 0.5}}
optim: {{lr: 0.003, warmup_steps: 2}}
batch_size: 16
epochs: 2
# A resume point after every step (every_minutes is checked after each optimiser step).
checkpoint: {{metric: val_cer, mode: min, num_to_keep: 1, every_minutes: 0.000001}}
"""


def _small_split(src: Path, dst: str, count: int) -> None:
    """The first ``count`` receipts of an SROIE split, scaled down, written as an SROIE split."""
    records = []
    for record in load_records(str(src), "sroie")[:count]:
        image, sx, sy = resize_keep_aspect(read_image(record.uri), _PAGE_SIDE, multiple=1)
        uri = storage.join(dst, "img", storage.basename(record.uri))
        storage.write_bytes(uri, encode_jpeg(image))
        regions = tuple(
            Region(tuple((x * sx, y * sy) for x, y in r.points), r.text, r.ignore) for r in record.regions
        )
        records.append(Record(uri, regions))
    write_sroie(records, dst)


@pytest.fixture(scope="module")
def bucket(s3_server: S3Server, shared_data: Path) -> str:
    """A bucket with ``data/train`` (8 receipts) and ``data/dev`` (4 receipts) in SROIE layout."""
    name = f"train-{np.random.default_rng().integers(1 << 30)}"
    s3_server.client().create_bucket(Bucket=name)
    _small_split(shared_data / "sroie" / "train", f"s3://{name}/data/train", 8)
    _small_split(shared_data / "sroie" / "dev", f"s3://{name}/data/dev", 4)
    return name


@dataclass
class Run:
    """The module's training run: its config file, resolved config and outcome."""

    config_path: Path
    cfg: TrainConfig
    outcome: TrainingOutcome


@pytest.fixture(scope="module")
def run(bucket: str, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """2 epochs of a tiny CRNN on 2 workers; rank 1 dies at the second step of epoch 2, once."""
    from ocrjobs.training.data import plan_data
    from ocrjobs.training.tasks import TASKS
    from ocrjobs.training.trainer import fit

    config_path = tmp_path_factory.mktemp("rec") / "train_rec.yaml"
    config_path.write_text(_RECOGNITION_YAML.format(data=f"s3://{bucket}/data"))
    base = load_config(config_path, TrainConfig, {"storage_path": f"s3://{bucket}/runs"})
    rows = plan_data(TASKS["recognition"](base), base).splits["train"].rows
    group = base.data.group_by_width  # pools of 2 batches sorted by line width
    steps_per_epoch = rows // base.scaling.num_workers // (base.batch_size * group) * group
    assert steps_per_epoch >= 3, "the crash below must fall inside epoch 2"
    cfg = base.model_copy(
        update={"debug": base.debug.model_copy(update={"crash_at_step": steps_per_epoch + 2})}
    )
    return Run(config_path, cfg, fit(cfg, command="pytest: fit(rec-tiny)"))


def test_two_workers_train_with_checkpoints_on_s3_and_val_loss_drops(run: Run) -> None:
    rows = MetricsLog(run.cfg.run_uri()).read()
    assert [row["epoch"] for row in rows] == [1.0, 2.0]
    assert rows[1]["val_loss"] < rows[0]["val_loss"]
    assert rows[1]["step"] == 2 * rows[0]["step"] > 0
    checkpoints = list_checkpoints(run.cfg.run_uri())
    assert checkpoints and all(
        c.uri.startswith(run.cfg.storage_path + "/rec-tiny/epoch_") for c in checkpoints
    )
    assert checkpoints[-1].epoch == 2
    assert storage.exists(storage.join(run.cfg.run_uri(), CONFIG_FILE))


def test_worker_killed_mid_epoch_restarts_from_the_resume_point(run: Run) -> None:
    marker = storage.join(run.cfg.run_uri(), CRASH_MARKER)
    assert storage.exists(marker), "rank 1 never crashed"
    assert storage.read_text(marker).startswith(f"rank 1 exited at step {run.cfg.debug.crash_at_step}")
    # The surviving attempt continued epoch 2 from a resume point: the one written after epoch 2's first
    # step surely (rank 0 wrote it before the second step, which rank 1 finished before it died), or the
    # one after the second if rank 0 wrote it before Ray stopped the group.
    assert run.outcome.start_epoch == 2
    assert run.outcome.start_batch in (1, 2)
    # Epoch 2's checkpoint superseded the resume point, which rank 0 then deleted.
    assert not storage.exists(storage.join(run.cfg.run_uri(), RESUME_FILE))
    rows = run.outcome.rows
    assert [row["epoch"] for row in rows] == [1.0, 2.0]
    # Only the steps left in epoch 2 were trained: none repeated, none missing.
    assert rows[1]["step"] == 2 * rows[0]["step"]
    assert run.outcome.latest is not None and run.outcome.latest.epoch == 2


def test_rerunning_a_finished_run_resumes_without_repeating_epochs(run: Run) -> None:
    before = MetricsLog(run.cfg.run_uri()).read()
    checkpoints = list_checkpoints(run.cfg.run_uri())
    # One worker this time: a checkpoint carries no trace of the world size it was written with.
    argv = [
        "train",
        "--config",
        str(run.config_path),
        "--storage-path",
        run.cfg.storage_path,
        "--workers",
        "1",
    ]
    assert main(argv) == 0
    assert MetricsLog(run.cfg.run_uri()).read() == before
    assert list_checkpoints(run.cfg.run_uri()) == checkpoints
    assert storage.read_text(storage.join(run.cfg.run_uri(), "command.txt")).startswith(
        "ocrjobs train --config"
    )


def test_exported_recognizer_matches_checkpoint_model(run: Run, bucket: str, tmp_path: Path) -> None:
    import torch

    from ocrjobs.geometry import crop_polygon
    from ocrjobs.recognition.predictor import RecognitionPredictor
    from ocrjobs.training.export import load_checkpoint_model
    from ocrjobs.training.tasks import TASKS

    out = tmp_path / "models" / "crnn_tiny"
    assert main(["export", "--checkpoint", run.cfg.run_uri(), "--out", str(out)]) == 0
    train_cfg, model, info = load_checkpoint_model(run.cfg.run_uri())
    assert info == run.outcome.best
    reference = TASKS["recognition"](train_cfg).build_predictor(model)
    # The torch backend: the claim is bit-equality with the checkpoint's model, which an
    # ONNX Runtime graph (the CPU default) only meets to float rounding.
    exported = RecognitionPredictor.from_model_dir(out, backend="torch")
    record = load_records(f"s3://{bucket}/data/dev", "sroie")[0]
    image = read_image(record.uri)
    crops = [crop_polygon(image, polygon) for polygon in record.polygons[:12]]
    assert [(r.text, r.score) for r in exported(crops)] == [(r.text, r.score) for r in reference(crops)]
    x = torch.randn(2, 3, 32, 64)
    with torch.inference_mode():
        assert torch.equal(exported.model(x), model(x))
    card = (out / "CARD.md").read_text()
    assert f"s3://{bucket}/data/train" in card and "synthetic `lines` x 32" in card
    assert f"| val_cer | {info.metrics['val_cer']:.4f} |" in card


_LOCAL_YAML = """\
name: rec-local
task: recognition
model:
  arch: crnn_small
  arch_kwargs: {channels: [8, 8, 8, 8], hidden: 8}
  preprocess: {height: 32, width: 64}
  charset: {name: printable}
data:
  train: {synthetic: [{kind: lines, count: 32}]}
  augment: false
  prep_num_cpus: 0.5
scaling: {num_workers: 1, cpus_per_worker: 0.5}
batch_size: 16
epochs: 1
log_every: 0
checkpoint: {metric: train_loss, mode: min, every_minutes: 0.000001}
"""


def test_a_relative_storage_path_is_the_drivers_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray Train workers run in their own working directory: what rank 0 writes itself (``metrics.csv``)
    must land in the run folder the driver named, not below Ray's session folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.yaml").write_text(_LOCAL_YAML)
    assert main(["train", "--config", "train.yaml", "--storage-path", "runs"]) == 0
    run = tmp_path / "runs" / "rec-local"
    assert [row["epoch"] for row in MetricsLog(str(run)).read()] == [1.0]
    assert [c.epoch for c in list_checkpoints(str(run))] == [1]
