"""The ``aigdetect`` command end to end: help, ``train`` (and ``--resume``), the
checkpoint it writes, and how bad inputs are refused."""

from __future__ import annotations

import io
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from aigdetect.checkpoint import (
    FORMAT,
    CheckpointError,
    ModelMeta,
    load_model,
    read_checkpoint,
    save_checkpoint,
)
from aigdetect.cli import app
from aigdetect.cli import train as cli_train
from aigdetect.engine import warn_changed_settings
from aigdetect.exif import CATEGORICAL_TAGS, ORDINAL_TAGS, Vocabulary
from aigdetect.losses import bce_ranking_loss, fidelity_ranking_loss, masked_cross_entropy
from aigdetect.network import ExtractorConfig
from aigdetect.training import (
    PRETEXT_HEADS,
    PretextTask,
    majority_classes,
    pretext_losses,
    validate,
    validation_score,
)

COMMANDS = ("train", "fit-gmm", "scan", "explain")

#: Fast settings: 2 steps of 4 photos x 2 patches on the CPU, no worker processes.
FAST = ["--max-steps", "2", "--epochs", "2", "--batch-size", "4", "--patches", "2",
        "--workers", "0", "--val-fraction", "0.25", "--device", "cpu"]


def run(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def text(result) -> str:
    """Everything the command printed, with rich's line wrapping and boxes undone."""
    return " ".join(result.output.replace("│", " ").split())


def train_args(photos: Path, output: Path, *extra: str) -> list[str]:
    return ["train", str(photos), "-o", str(output), *extra]


# ---------------------------------------------------------------------------
# Help and version
# ---------------------------------------------------------------------------

def test_help_lists_every_command():
    result = run("--help")
    assert result.exit_code == 0, result.output
    for command in COMMANDS:
        assert command in text(result)


def test_no_arguments_shows_help():
    result = run()
    assert "train" in text(result) and "Usage" in text(result)


def test_train_help_documents_its_options():
    result = run("train", "--help")
    assert result.exit_code == 0
    for option in ("--max-steps", "--resume", "--patch-size", "--val-fraction", "--head-weight"):
        assert option in text(result)


def test_version():
    result = run("--version")
    assert result.exit_code == 0
    assert result.output.strip() == "aigdetect 0.1.0"


def test_python_m_aigdetect_help_in_a_subprocess(subprocess_env):
    completed = subprocess.run(
        [sys.executable, "-m", "aigdetect", "--help"],
        capture_output=True, text=True, timeout=120, env=subprocess_env,
    )
    assert completed.returncode == 0, completed.stderr
    for command in COMMANDS:
        assert command in completed.stdout


# ---------------------------------------------------------------------------
# One training run shared by the tests below
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(session_photo_folder, tmp_path_factory):
    """Train 2 steps on the 12 synthetic photos plus a garbage file and a photo
    without EXIF (both skipped); returns (result, checkpoint path)."""
    root = tmp_path_factory.mktemp("train")
    photos = root / "photos"
    shutil.copytree(session_photo_folder, photos)
    (photos / "garbage.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    Image.new("RGB", (160, 128), (90, 120, 150)).save(photos / "no_exif.jpg")
    output = root / "run" / "model.pt"
    result = run(*train_args(photos, output, *FAST, "--head-weight", "model=0.5"))
    return result, output


def test_train_succeeds_and_reports(trained):
    result, output = trained
    assert result.exit_code == 0, result.output
    assert output.is_file()
    assert not list(output.parent.glob(".*.tmp"))  # atomic write left nothing behind
    assert "9 photos" in text(result) and "3 photos" in text(result)
    assert "skipped 1 unreadable" in text(result)
    assert "without any usable EXIF" in text(result)
    assert "Saved" in text(result) and "after 2 steps" in text(result)


def test_best_epoch_is_kept_beside_the_last(trained):
    _, output = trained
    best = output.with_name("model.best.pt")
    assert best.is_file()
    _, best_meta = load_model(best)
    _, last_meta = load_model(output)
    assert best_meta.metrics == last_meta.metrics  # one epoch: the last is the best
    _, payload = read_checkpoint(best)
    assert "training_state" not in payload  # weights only, ready to ship
    assert validation_score(best_meta.metrics) is not None


def test_validation_score_is_mean_margin_over_chance():
    metrics = {
        "iso": {"concordance": 0.70, "chance": 0.5, "n": 10},
        "flash": {"accuracy": 0.80, "chance": 0.90, "n": 10},
    }
    assert validation_score(metrics) == pytest.approx((0.20 - 0.10) / 2)
    assert validation_score({}) is None


def test_checkpoint_loads_into_a_working_model(trained):
    _, output = trained
    model, meta = load_model(output)
    assert not model.training
    assert (meta.epoch, meta.step) == (1, 2)  # 9 training photos / batch 4 = 2 steps = 1 epoch
    assert meta.config == ExtractorConfig(patch_size=64)
    assert set(meta.vocabularies) == set(CATEGORICAL_TAGS)
    assert meta.ordinal_tags == list(ORDINAL_TAGS)
    assert meta.training["train_photos"] == 9 and meta.training["val_photos"] == 3
    assert meta.training["max_steps"] == 2 and meta.training["head_weights"] == {"model": 0.5}
    patches = torch.randint(0, 256, (2, 2, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        logits, scores = model(patches)
    for tag, vocabulary in meta.vocabularies.items():
        assert logits[tag].shape == (2, len(vocabulary))
    assert set(scores) == set(ORDINAL_TAGS)


def test_checkpoint_is_safe_to_load(trained):
    _, output = trained
    payload = torch.load(output, map_location="cpu", weights_only=True)
    assert set(payload) == {"meta", "model", "training_state"}
    assert isinstance(payload["meta"], str)
    assert json.loads(payload["meta"])["format"] == FORMAT
    assert all(isinstance(v, torch.Tensor) for v in payload["model"].values())
    assert {"optimizer", "scheduler"} <= set(payload["training_state"])


def test_log_has_per_head_losses_and_validation(trained):
    _, output = trained
    log = output.with_name("model.pt.log.jsonl")
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(records) == 1
    record = records[0]
    assert (record["epoch"], record["step"]) == (1, 2)
    losses = record["train_loss"]
    assert set(losses) == {*CATEGORICAL_TAGS, *ORDINAL_TAGS, "total"}
    assert all(math.isfinite(v) for v in losses.values())
    assert losses["make"] > 0 and losses["iso"] > 0
    assert record["loss_weights"]["model"] == 0.5 and record["loss_weights"]["make"] == 1.0
    validation = record["validation"]
    assert any("concordance" in m for m in validation.values())
    for metrics in validation.values():
        value = metrics.get("accuracy", metrics.get("concordance"))
        assert 0.0 <= value <= 1.0 and metrics["n"] > 0
    assert output.with_name("model.pt.labels.json").is_file()


def test_an_earlier_better_epoch_stays_the_best_also_across_resume(
        session_photo_folder, tmp_path, monkeypatch):
    """Validation scores 0.2, 0.9, 0.1, then (resumed) 0.5: best.pt is epoch 2's, and
    the resumed run remembers the 0.9 it has to beat."""
    scores = iter([0.2, 0.9, 0.1, 0.5])
    monkeypatch.setattr(PretextTask, "validation_score", lambda self, metrics: next(scores))
    output = tmp_path / "model.pt"
    best = output.with_name("model.best.pt")
    fast = ["--batch-size", "4", "--patches", "2", "--workers", "0", "--val-fraction", "0.25",
            "--device", "cpu", "--max-steps", "1000"]
    first = run(*train_args(session_photo_folder, output, *fast, "--epochs", "3"))
    assert first.exit_code == 0, first.output
    assert load_model(best)[1].epoch == 2 and load_model(output)[1].epoch == 3
    resumed = run(*train_args(session_photo_folder, output, *fast, "--epochs", "4", "--resume"))
    assert resumed.exit_code == 0, resumed.output
    assert load_model(best)[1].epoch == 2 and load_model(output)[1].epoch == 4


def test_ctrl_c_says_what_was_kept(session_photo_folder, tmp_path, monkeypatch):
    """Ctrl-C exits 130 with one line on stderr, as scan does: whether an epoch was
    saved, and that --resume continues it."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_train, "train", interrupted)
    output = tmp_path / "model.pt"
    first = run(*train_args(session_photo_folder, output, *FAST))
    assert first.exit_code == 130 and "nothing was saved" in text(first)
    output.write_bytes(b"an earlier epoch")
    again = run(*train_args(session_photo_folder, output, *FAST, "--resume"))
    assert again.exit_code == 130 and "continue with --resume" in text(again)


def test_resume_continues_the_run(trained, tmp_path):
    _, first = trained
    output = tmp_path / "model.pt"
    shutil.copy(first, output)
    photos = Path(load_model(first)[1].training["photos"])
    before = torch.load(output, weights_only=True)["model"]
    resume = ["--epochs", "2", "--batch-size", "4", "--patches", "2", "--workers", "0",
              "--val-fraction", "0.25", "--device", "cpu"]  # no step limit
    result = run(*train_args(photos, output, *resume, "--resume"))
    assert result.exit_code == 0, result.output
    assert "Resuming from" in text(result) and "epochs done: 1, step 2" in text(result)
    _, meta = load_model(output)
    assert (meta.epoch, meta.step) == (2, 4)
    payload = torch.load(output, weights_only=True)
    optimizer_state = payload["training_state"]["optimizer"]["state"]
    adam_steps = {float(s["step"]) for s in optimizer_state.values()}
    assert adam_steps == {4.0}  # the optimiser state was restored, not restarted
    changed = [k for k, v in payload["model"].items() if not torch.equal(v, before[k])]
    assert changed  # it did train

    again = run(*train_args(photos, output, *resume, "--resume"))  # already at --epochs
    assert again.exit_code == 0, again.output
    assert load_model(output)[1].step == 4


def test_resume_at_max_steps_takes_no_further_step(trained, tmp_path):
    _, first = trained
    output = tmp_path / "model.pt"
    shutil.copy(first, output)
    photos = Path(load_model(first)[1].training["photos"])
    before = output.read_bytes()
    result = run(*train_args(photos, output, *FAST, "--resume"))  # same --max-steps 2
    assert result.exit_code == 0, result.output
    assert load_model(output)[1].step == 2
    assert "Nothing to train" in text(result) and output.read_bytes() == before


def test_resume_without_a_checkpoint_starts_fresh(session_photo_folder, tmp_path):
    output = tmp_path / "new.pt"
    fast_one = [*FAST]
    fast_one[fast_one.index("--max-steps") + 1] = "1"
    result = run(*train_args(session_photo_folder, output, *fast_one, "--resume"))
    assert result.exit_code == 0, result.output
    assert "does not exist yet" in text(result)
    assert load_model(output)[1].step == 1


# ---------------------------------------------------------------------------
# Refused inputs
# ---------------------------------------------------------------------------

def test_empty_folder_is_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run(*train_args(empty, tmp_path / "m.pt", *FAST))
    assert result.exit_code == 2
    assert "no images found" in text(result)
    assert not (tmp_path / "m.pt").exists()


def test_folder_with_one_usable_photo_is_refused(tmp_path, make_jpeg):
    make_jpeg(tmp_path / "photos" / "a.jpg", exif={"Make": "Canon", "Model": "EOS"})
    make_jpeg(tmp_path / "photos" / "b.jpg", exif=None)
    result = run(*train_args(tmp_path / "photos", tmp_path / "m.pt", *FAST))
    assert result.exit_code == 2
    assert "fewer than 2 photos" in text(result)


def test_an_existing_checkpoint_is_continued_or_knowingly_replaced(trained, tmp_path):
    """A forgotten --resume must not wipe hours of training; -o a folder is refused
    before training, not after it."""
    _, first = trained
    output = tmp_path / "model.pt"
    shutil.copy(first, output)
    photos = Path(load_model(first)[1].training["photos"])
    before = output.read_bytes()
    refused = run(*train_args(photos, output, *FAST))
    assert refused.exit_code == 2 and "--overwrite" in text(refused)
    assert output.read_bytes() == before
    both = run(*train_args(photos, output, *FAST, "--resume", "--overwrite"))
    assert both.exit_code == 2 and output.read_bytes() == before
    folder = run(*train_args(photos, tmp_path, *FAST))
    assert folder.exit_code == 2 and "is a folder" in text(folder)
    fast_one = [*FAST]
    fast_one[fast_one.index("--max-steps") + 1] = "1"
    replaced = run(*train_args(photos, output, *fast_one, "--overwrite"))
    assert replaced.exit_code == 0, replaced.output
    assert load_model(output)[1].step == 1  # a new run, not the old one's 2 steps


def test_resume_continues_a_run_as_it_began(trained, tmp_path):
    """Another --patch-size than the checkpoint's is refused (the checkpoint would say
    64 px over 32 px training); --init does not apply, and a warning says so."""
    _, first = trained
    output = tmp_path / "model.pt"
    shutil.copy(first, output)
    photos = Path(load_model(first)[1].training["photos"])
    before = output.read_bytes()
    other_size = run(*train_args(photos, output, *FAST, "--resume", "--patch-size", "32"))
    assert other_size.exit_code == 2 and "give --patch-size 64" in text(other_size)
    assert output.read_bytes() == before
    with_init = run(*train_args(photos, output, *FAST, "--resume", "--init", first))
    assert with_init.exit_code == 0, with_init.output
    assert "--init" in text(with_init) and "is not used" in text(with_init)
    assert "init was" not in text(with_init)  # it started from the same weights
    assert load_model(output)[1].training["init"] is None  # as the run began


def test_resume_says_each_setting_that_differs_from_the_checkpoint(trained, tmp_path):
    """Another --lr or other photos than the checkpoint's are said with both values; a
    larger budget (--epochs, --max-steps) or another --workers is what resuming is for."""
    _, first = trained
    output = tmp_path / "model.pt"
    shutil.copy(first, output)
    photos = Path(load_model(first)[1].training["photos"])
    fast = [*FAST]
    fast[fast.index("--max-steps") + 1] = "3"
    fast[fast.index("--workers") + 1] = "1"
    result = run(*train_args(photos, output, *fast, "--resume", "--lr", "0.001",
                             "--head-weight", "model=0.5"))
    assert result.exit_code == 0, result.output
    said = text(result)
    assert "--resume: lr was 0.0003, now 0.001; the run goes on with the new value" in said
    assert said.count("the run goes on with the new value") == 1
    assert load_model(output)[1].training["lr"] == 0.001


def test_resume_compares_settings_as_the_checkpoint_stores_them():
    """Paths and tuples come back from a checkpoint as strings and lists: the same
    setting read back is no change."""
    console = Console(file=io.StringIO(), width=200)
    stored = {"real": ["photos/a"], "augmentation": {"scale": [0.5, 1.0]}, "lr": 0.001}
    warn_changed_settings(stored, {"real": [Path("photos/a")],
                                   "augmentation": {"scale": (0.5, 1.0)}, "lr": 0.001}, console)
    assert console.file.getvalue() == ""
    warn_changed_settings(stored, {**stored, "lr": 0.01}, console)
    assert "lr was 0.001, now 0.01" in console.file.getvalue()


def test_a_zero_head_weight_turns_the_head_off():
    assert cli_train.parse_head_weights(["model=0"], PRETEXT_HEADS) == {"model": 0.0}


def test_resume_refuses_a_checkpoint_of_another_training(session_photo_folder, tmp_path):
    """--resume of a binary detector's checkpoint as the EXIF pretext: a usage error
    naming both kinds, not a traceback from mismatched heads."""
    from aigdetect.detectors import default_model_dir
    output = tmp_path / "binary.pt"
    shutil.copy(default_model_dir() / "binary.pt", output)
    result = run(*train_args(session_photo_folder, output, *FAST, "--resume"))
    assert result.exit_code == 2, result.output
    assert "a binary checkpoint, where a pretext one is needed" in text(result)
    assert "continue it with --binary, or give another -o" in text(result)
    assert sorted(tmp_path.iterdir()) == [output]  # refused before the data: no label cache


@pytest.mark.parametrize(("extra", "message"), [
    (["--head-weight", "colour=2"], "no head 'colour'"),
    (["--real", "."], "--real applies to --binary only"),
    (["--alpha", "0"], "--alpha applies to --binary only"),
    (["--real", ".", "--alpha", "0"], "--real, --alpha apply to --binary only"),
    (["--max-minutes", "-1"], "max-minutes"),
])
def test_options_that_would_be_ignored_are_refused(session_photo_folder, tmp_path, extra,
                                                   message):
    extra = [str(tmp_path) if a == "." else a for a in extra]
    result = run(*train_args(session_photo_folder, tmp_path / "m.pt", *FAST, *extra))
    assert result.exit_code == 2
    assert message in text(result)
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize(("training", "extra", "message"), [
    (["--binary", "--real", ".", "--fake", "."], ["--ranking-loss", "bce"],
     "--ranking-loss applies to the EXIF pretext only, not to --binary"),
    (["--faces", "."], ["--ranking-loss", "bce", "--min-class-count", "7"],
     "--ranking-loss, --min-class-count apply to the EXIF pretext only, not to --faces"),
    (["--binary", "--real", ".", "--fake", "."], ["--patch-size", "32"],
     "--binary takes its teacher's patch size"),
])
def test_pretext_options_are_refused_in_other_trainings(tmp_path, training, extra, message):
    """Options another training would silently drop are usage errors before any work."""
    args = [str(tmp_path) if a == "." else a for a in training]
    result = run("train", *args, "-o", tmp_path / "m.pt", *FAST, *extra)
    assert result.exit_code == 2, result.output
    assert message in text(result)
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("extra, message", [
    (["--patch-size", "30"], "multiple of 8"),
    (["--head-weight", "model"], "TAG=NUMBER"),
    (["--head-weight", "make=nan"], "a weight is a number of 0 or more"),
    (["--head-weight", "make=inf"], "a weight is a number of 0 or more"),
    (["--head-weight", "make=-1"], "a weight is a number of 0 or more"),
    (["--lr", "-1"], "--lr -1.0 must be a number above 0"),
    (["--lr", "0"], "--lr 0.0 must be a number above 0"),
    (["--lr", "nan"], "--lr nan must be a number above 0"),
    (["--weight-decay", "-1"], "--weight-decay -1.0 must be a number of 0 or more"),
    (["--weight-decay", "inf"], "--weight-decay inf must be a number of 0 or more"),
    (["--ranking-loss", "hinge"], "unknown ranking loss"),
])
def test_bad_training_options_are_refused(session_photo_folder, tmp_path, extra, message):
    """Refused before any photo is read: nothing is written (no label cache either)."""
    result = run(*train_args(session_photo_folder, tmp_path / "m.pt", *extra))
    assert result.exit_code == 2
    assert message in text(result)
    if "--ranking-loss" not in extra:  # a loss name is checked once the photos are read
        assert list(tmp_path.iterdir()) == []
    assert not (tmp_path / "m.pt").exists()


def test_training_never_writes_over_a_checkpoint_it_reads(trained, session_photo_folder,
                                                          tmp_path):
    """-o is rewritten every epoch: naming the --init or --teacher checkpoint would
    destroy it, even with --overwrite (which replaces earlier outputs, not inputs)."""
    _, first = trained
    start = tmp_path / "start.pt"
    shutil.copy(first, start)
    before = start.read_bytes()
    init = run(*train_args(session_photo_folder, start, *FAST, "--init", start, "--overwrite"))
    assert init.exit_code == 2 and "is the --init checkpoint" in text(init)
    teacher = run("train", "--binary", "--real", session_photo_folder, "--fake", tmp_path,
                  "--teacher", start, "-o", start, "--overwrite", *FAST)
    assert teacher.exit_code == 2 and "is the --teacher checkpoint" in text(teacher)
    assert start.read_bytes() == before


def test_freeze_extractor_refuses_a_distillation_weight(session_photo_folder, tmp_path):
    """A frozen extractor is the teacher's: --alpha would weigh a loss that is always 0."""
    result = run("train", "--binary", "--real", session_photo_folder, "--fake", tmp_path,
                 "-o", tmp_path / "b.pt", "--freeze-extractor", "--alpha", "0.5", *FAST)
    assert result.exit_code == 2 and "nothing to distil" in text(result)
    assert not (tmp_path / "b.pt").exists()


def test_missing_photo_folder_is_refused(tmp_path):
    result = run(*train_args(tmp_path / "nowhere", tmp_path / "m.pt"))
    assert result.exit_code == 2
    assert "does not exist" in text(result)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_refused(session_photo_folder, tmp_path):
    result = run(*train_args(session_photo_folder, tmp_path / "m.pt", "--device", "cuda"))
    assert result.exit_code == 2
    assert "CUDA" in text(result)


# ---------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------

def small_meta() -> ModelMeta:
    vocabularies = {tag: Vocabulary(["a", "b", "other"]) for tag in CATEGORICAL_TAGS}
    return ModelMeta(config=ExtractorConfig(width=8, patch_size=32), vocabularies=vocabularies,
                     epoch=3, step=30, metrics={"iso": {"concordance": 0.7}})


def test_checkpoint_round_trip(tmp_path):
    meta = small_meta()
    model = meta.build_model()
    save_checkpoint(tmp_path / "m.pt", model, meta)
    loaded, loaded_meta = load_model(tmp_path / "m.pt")
    assert loaded_meta.config == meta.config
    assert {t: v.classes for t, v in loaded_meta.vocabularies.items()} == {
        t: v.classes for t, v in meta.vocabularies.items()}
    assert (loaded_meta.epoch, loaded_meta.step) == (3, 30)
    assert loaded_meta.metrics == meta.metrics
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])
    assert "training_state" not in read_checkpoint(tmp_path / "m.pt")[1]


def test_the_same_weights_are_written_as_the_same_bytes(tmp_path):
    """Wherever and by whichever process: the hashes recorded of shipped weights hold
    when ``calibrate`` copies them into a folder."""
    meta = small_meta()
    model = meta.build_model()
    first, second = tmp_path / "m.pt", tmp_path / "elsewhere" / "other name.pt"
    save_checkpoint(first, model, meta)
    save_checkpoint(second, model, meta)
    assert first.read_bytes() == second.read_bytes()


def test_garbage_checkpoint_raises(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_model(garbage)
    with pytest.raises(CheckpointError, match="no such file"):
        load_model(tmp_path / "missing.pt")


def test_a_cut_checkpoint_is_said_to_be_damaged_in_one_line(tmp_path):
    """A copy cut short: one line that says so, not torch's paragraph of advice."""
    whole = tmp_path / "m.pt"
    save_checkpoint(whole, small_meta().build_model(), small_meta())
    cut = tmp_path / "cut.pt"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(CheckpointError) as raised:
        load_model(cut)
    message = str(raised.value)
    assert "damaged or incomplete" in message and "\n" not in message
    assert "high likelihood" not in message and len(message) < len(str(cut)) + 200


def test_foreign_torch_files_raise(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="not an aigdetect checkpoint"):
        load_model(tmp_path / "list.pt")
    torch.save({"meta": json.dumps({"format": "something else"}), "model": {}},
               tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an aigdetect extractor checkpoint"):
        load_model(tmp_path / "other.pt")


def test_newer_checkpoint_format_is_refused(tmp_path):
    meta = small_meta()
    data = json.loads(meta.to_json())
    data["format_version"] = 999
    torch.save({"meta": json.dumps(data), "model": meta.build_model().state_dict()},
               tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="newer"):
        load_model(tmp_path / "new.pt")


class _Sneaky:
    """Unpickling this would run code; a safe loader must refuse the file."""

    def __reduce__(self):
        return (print, ("unpickled!",))


def test_pickled_objects_are_refused(tmp_path, capsys):
    torch.save({"meta": small_meta().to_json(), "model": _Sneaky()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "evil.pt")
    assert "unpickled!" not in capsys.readouterr().out


def test_weights_not_matching_their_config_raise(tmp_path):
    meta = small_meta()
    state = meta.build_model().state_dict()
    key = next(k for k in state if k.startswith("heads.categorical"))
    state[key] = torch.zeros(7, 7)
    torch.save({"meta": meta.to_json(), "model": state}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="do not match"):
        load_model(tmp_path / "bad.pt")


# ---------------------------------------------------------------------------
# Validation metrics
# ---------------------------------------------------------------------------

def test_single_class_head_does_not_beat_chance(session_photo_folder):
    from aigdetect.dataset import PretextDataset, load_labels
    from aigdetect.exif import build_vocabularies
    from aigdetect.training import majority_classes, validate

    photos, _ = load_labels(sorted(session_photo_folder.rglob("*.jpg")), None)
    train = [p for p in photos if p.labels.white_balance is None]  # no white balance known
    val = [p for p in photos if p.labels.white_balance is not None][:2]
    assert len(val) == 2
    meta = ModelMeta(config=ExtractorConfig(width=8, patch_size=32),
                     vocabularies=build_vocabularies([p.labels for p in train], 3))
    assert meta.vocabularies["white_balance"].classes == ["other"]
    model = meta.build_model()
    train_set = PretextDataset(train, meta.vocabularies, 1, 32, train=True)
    val_set = PretextDataset(val, meta.vocabularies, 1, 32, train=False)
    loader = torch.utils.data.DataLoader(val_set, batch_size=2)
    metrics = validate(model, loader, torch.device("cpu"), majority_classes(train_set))
    assert "white_balance" not in metrics  # a one-class head has nothing to measure


# ---------------------------------------------------------------------------
# Real photos (shared corpus; skipped when absent)
# ---------------------------------------------------------------------------

@pytest.mark.slow
def test_one_step_on_real_photos(shared_photos, tmp_path):
    folder = tmp_path / "real"
    folder.mkdir()
    for number, path in enumerate(shared_photos):
        (folder / f"{number:02d}{path.suffix.lower()}").symlink_to(path)
    output = tmp_path / "real.pt"
    result = run(*train_args(folder, output, "--max-steps", "1", "--epochs", "1",
                             "--batch-size", "2", "--patches", "2", "--workers", "0",
                             "--val-fraction", "0.2", "--device", "cpu"))
    assert result.exit_code == 0, result.output
    _, meta = load_model(output)
    assert meta.step == 1
    assert meta.training["train_photos"] + meta.training["val_photos"] >= 2
    assert meta.training["train_photos"] >= 2
    for path in shared_photos:  # evidence untouched: the links still point at real files
        assert path.is_file()


@pytest.mark.parametrize("command", ["train", "fit-gmm", "fit-residual"])
def test_outputs_never_land_in_the_folder_read(session_photo_folder, tmp_path, command):
    """The next walk of that folder would take a checkpoint or a detector folder's
    files for data; the folder is left as it was."""
    photos = tmp_path / "photos"
    shutil.copytree(session_photo_folder, photos)
    before = sorted(p.relative_to(photos) for p in photos.rglob("*"))
    args = {"train": ["train", photos, "-o", photos / "m.pt", *FAST],
            "fit-gmm": ["fit-gmm", photos, "-o", photos / "detector", "--workers", "0"],
            "fit-residual": ["fit-residual", photos / "detector", "--real", photos,
                             "--fake", tmp_path]}[command]
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert "is inside the input folder" in text(result)
    assert sorted(p.relative_to(photos) for p in photos.rglob("*")) == before


def test_an_epoch_cut_short_is_not_counted_whole(session_photo_folder, tmp_path):
    """--max-steps 1 on an epoch of two steps: the checkpoint says no epoch is done, so
    --resume repeats the rest of it."""
    output = tmp_path / "m.pt"
    one_step = [*FAST]
    one_step[one_step.index("--max-steps") + 1] = "1"
    assert run(*train_args(session_photo_folder, output, *one_step)).exit_code == 0
    _, meta = load_model(output)
    assert (meta.epoch, meta.step) == (0, 1)


def test_max_minutes_stops_on_the_clock(session_photo_folder, tmp_path, monkeypatch):
    """A clock that reads 50 s later at every look: the limit of one minute is passed
    after the second step, which is where training must stop."""
    from aigdetect import engine
    clock = iter(range(0, 100_000, 50))
    monkeypatch.setattr(engine, "time", SimpleNamespace(monotonic=lambda: next(clock)))
    output = tmp_path / "m.pt"
    args = ["--epochs", "3", "--batch-size", "4", "--patches", "2", "--workers", "0",
            "--val-fraction", "0.25", "--device", "cpu", "--max-minutes", "1"]
    assert run(*train_args(session_photo_folder, output, *args)).exit_code == 0
    assert load_model(output)[1].step == 2


def test_a_failed_checkpoint_write_leaves_the_previous_one(tmp_path, monkeypatch):
    """A full disk mid-write must not leave half a checkpoint where the last one was."""
    path = tmp_path / "m.pt"
    path.write_bytes(b"previous epoch")

    def half_written(file: Path, data: bytes) -> None:
        with open(file, "wb") as handle:
            handle.write(data[:4])
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_bytes", half_written)
    with pytest.raises(OSError):
        save_checkpoint(path, torch.nn.Linear(1, 1), ModelMeta(config=ExtractorConfig()))
    assert path.read_bytes() == b"previous epoch"


def test_pretext_losses_use_each_heads_own_column_and_the_chosen_ranker():
    generator = torch.Generator().manual_seed(0)
    logits = {tag: torch.randn(6, 3, generator=generator) for tag in CATEGORICAL_TAGS}
    scores = {tag: torch.randn(6, generator=generator) for tag in ORDINAL_TAGS}
    classes = torch.randint(-1, 3, (6, len(CATEGORICAL_TAGS)), generator=generator)
    ordinal = torch.randn(6, len(ORDINAL_TAGS), generator=generator)
    for name, rank in (("fidelity", fidelity_ranking_loss), ("bce", bce_ranking_loss)):
        losses = pretext_losses((logits, scores), classes, ordinal, name)
        for i, tag in enumerate(ORDINAL_TAGS):
            assert torch.allclose(losses[tag], rank(scores[tag], ordinal[:, i])), (name, tag)
        for i, tag in enumerate(CATEGORICAL_TAGS):
            assert torch.allclose(losses[tag], masked_cross_entropy(logits[tag], classes[:, i]))


class _AlwaysClassZero(torch.nn.Module):
    """Categorical heads that always predict class 0 of two."""

    def __init__(self) -> None:
        super().__init__()
        self.heads = SimpleNamespace(
            categorical={tag: torch.nn.Linear(1, 2) for tag in CATEGORICAL_TAGS}, ranking={})

    def forward(self, patches):
        return {tag: patches.float() for tag in CATEGORICAL_TAGS}, {}


def test_validation_accuracy_counts_only_known_labels():
    patches = torch.tensor([[1.0, 0.0]] * 4)
    classes = torch.tensor([[0], [1], [-1], [-1]]).repeat(1, len(CATEGORICAL_TAGS))
    rows = [(patches[k], classes[k], torch.zeros(len(ORDINAL_TAGS)), 0) for k in range(4)]
    loader = torch.utils.data.DataLoader(rows, batch_size=4)
    metrics = validate(_AlwaysClassZero(), loader, torch.device("cpu"), {})
    tag = CATEGORICAL_TAGS[0]
    assert (metrics[tag]["accuracy"], metrics[tag]["n"]) == (0.5, 2)


def test_the_chance_baseline_is_the_most_frequent_class():
    photos = [SimpleNamespace(labels=SimpleNamespace(**dict.fromkeys(CATEGORICAL_TAGS, value)))
              for value in (1, 1, 1, 0, 2, -1)]
    dataset = SimpleNamespace(photos=photos, vocabularies={
        tag: SimpleNamespace(index=lambda value: value) for tag in CATEGORICAL_TAGS})
    assert majority_classes(dataset) == dict.fromkeys(CATEGORICAL_TAGS, 1)
