"""Evidence-grade scanning: ``scan`` never destroys its inputs or earlier results,
survives Ctrl-C and kills, any file name, bad numbers and bad model folders.

Everything goes through the real CLI (in-process, or a real process where
signals are the point) with the shipped detector and ``--patches 4``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers_images import invoke, make_good_folder, noise_jpeg, parse_json_stdout, snapshot

from aigdetect.calibration import Calibration
from aigdetect.cli import EXIT_INTERRUPTED, EXIT_USAGE
from aigdetect.cli import scan as scan_cli
from aigdetect.density import RealPhotoDensity
from aigdetect.detectors import DENSITY_FILE, EXTRACTOR_FILE, default_model_dir
from aigdetect.files import IMAGE_EXTENSIONS, walk_folder
from aigdetect.residual_model import ResidualClassifier

FAST = ["--workers", "0", "--patches", "4"]
#: A name with a byte that is not UTF-8 and a terminal escape sequence (red text).
NASTY = os.fsdecode(b"bad\xff\x1b[31mred.jpg")
NASTY_SHOWN = "bad\\xff\\x1b[31mred.jpg"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every line must be a whole JSON record."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three noise JPEGs and a PNG; do not modify them (copy first)."""
    return make_good_folder(tmp_path_factory.mktemp("safety") / "good")


def test_evidence_is_only_ever_opened_for_reading(runner, good, tmp_path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Every open of an evidence file, by any code in the process (decoding, hashing,
    metadata), asks for reading only: as root a write-protected file stops nothing, so
    the modes themselves are checked."""
    import builtins
    evidence = {os.path.realpath(p) for p in good}
    writes: list[str] = []
    real_open, real_os_open = builtins.open, os.open
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC

    def checked_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.path.realpath(file) in evidence \
                and set(mode) & set("wax+"):
            writes.append(f"open({file}, {mode!r})")
        return real_open(file, mode, *args, **kwargs)

    def checked_os_open(path, flags, *args, **kwargs):
        if os.path.realpath(path) in evidence and flags & write_flags:
            writes.append(f"os.open({path}, {flags:#o})")
        return real_os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", checked_open)
    monkeypatch.setattr(os, "open", checked_os_open)
    result = invoke(runner, ["scan", good[0].parent, "--provenance", "-f", "json", "-o",
                             tmp_path / "r.json", *FAST])
    assert result.exit_code in (0, 1), result.stderr
    assert len(json.loads((tmp_path / "r.json").read_text())["results"]) == len(good)
    assert writes == []


# ---------------------------------------------------------------------------
# 1. -o never destroys evidence or earlier results
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("extra", [[], ["--overwrite"], ["--force", "--overwrite"]])
def test_output_equal_to_an_input_is_refused(runner, tmp_path, extra) -> None:
    """Output never replaces an input, whatever the flags; the hint does not offer one
    that would."""
    photo = noise_jpeg(tmp_path / "evidence.jpg")
    before = snapshot([photo])
    result = invoke(runner, ["scan", photo, "-f", "json", "-o", photo, *extra, *FAST])
    assert result.exit_code == EXIT_USAGE
    assert "is one of the input files" in result.stderr and "--force" not in result.stderr
    assert snapshot([photo]) == before


def test_output_hard_linked_to_an_input_is_refused(runner, tmp_path) -> None:
    """Another name in another folder, the same file: still the evidence."""
    photo = noise_jpeg(tmp_path / "case" / "evidence.jpg")
    link = tmp_path / "reports" / "results.json"
    link.parent.mkdir()
    os.link(photo, link)
    before = snapshot([photo])
    result = invoke(runner, ["scan", photo, "-f", "json", "-o", link, "--overwrite", *FAST])
    assert result.exit_code == EXIT_USAGE and "is one of the input files" in result.stderr
    assert snapshot([photo]) == before


def test_output_inside_an_input_folder_needs_force(runner, tmp_path) -> None:
    folder = tmp_path / "case"
    photos = make_good_folder(folder, count=1)
    out = folder / "results.json"
    refused = invoke(runner, ["scan", folder, "-f", "json", "-o", out, *FAST])
    assert refused.exit_code == EXIT_USAGE
    assert "inside the input folder" in refused.stderr
    assert not out.exists()
    forced = invoke(runner, ["scan", folder, "-f", "json", "-o", out, "--force", *FAST])
    assert forced.exit_code in (0, 1)
    assert len(json.loads(out.read_text())["results"]) == len(photos)


@pytest.mark.parametrize("how", ["glob", "stdin"])
def test_a_folder_searched_by_a_glob_or_listed_on_stdin_is_an_input_folder(
        runner, tmp_path, how) -> None:
    """Results written into a folder the inputs search would mix with the evidence
    (and a later scan of it would read them), however the folder was named."""
    folder = tmp_path / "case"
    make_good_folder(folder, count=1)
    out = folder / "results.jsonl"
    args, stdin = (([str(folder / "*.jpg")], None) if how == "glob"
                   else (["-"], f"{folder}\n"))
    refused = invoke(runner, ["scan", *args, "-f", "jsonl", "-o", out, *FAST], input=stdin)
    assert refused.exit_code == EXIT_USAGE
    assert "inside the input folder" in refused.stderr
    assert not out.exists()


def test_results_beside_the_files_named_need_force(runner, tmp_path) -> None:
    """`find case -print0 | aigdetect scan -0 - -o case/results.jsonl`, or a shell glob:
    no folder is named, yet the results would land among the evidence."""
    folder = tmp_path / "case"
    photos = make_good_folder(folder, count=2)
    out = folder / "results.jsonl"
    listed = "\0".join(str(p) for p in photos)
    refused = invoke(runner, ["scan", "-0", "-", "-f", "jsonl", "-o", out, *FAST], input=listed)
    assert refused.exit_code == EXIT_USAGE
    assert "lies beside the files it reads" in refused.stderr and not out.exists()
    forced = invoke(runner, ["scan", *photos, "-f", "jsonl", "-o", out, "--force", *FAST])
    assert forced.exit_code in (0, 1) and len(read_jsonl(out)) == len(photos)


def test_an_output_name_too_long_is_a_usage_error(runner, good, tmp_path) -> None:
    result = invoke(runner, ["scan", good[0], "-f", "jsonl", "-o", tmp_path / ("R" * 300),
                             *FAST])
    assert result.exit_code == EXIT_USAGE
    assert "File name too long" in result.stderr


def test_output_dash_is_stdout(runner, good, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke(runner, ["scan", good[0], "-f", "jsonl", "-o", "-", *FAST])
    assert result.exit_code in (0, 1), result.stderr
    assert json.loads(result.stdout)["path"] == str(good[0])
    assert not (tmp_path / "-").exists()


def test_existing_output_is_not_truncated_without_overwrite(runner, good, tmp_path) -> None:
    for fmt, name in (("json", "out.json"), ("csv", "out.csv"), ("jsonl", "out.jsonl")):
        out = tmp_path / name
        out.write_text("earlier results\n")
        result = invoke(runner, ["scan", good[0], "-f", fmt, "-o", out, *FAST])
        assert result.exit_code == EXIT_USAGE, fmt
        assert "--overwrite" in result.stderr and "--resume" in result.stderr
        assert out.read_text() == "earlier results\n", fmt
    replaced = invoke(runner, ["scan", good[0], "-f", "json", "-o", tmp_path / "out.json",
                               "--overwrite", *FAST])
    assert replaced.exit_code in (0, 1)
    assert len(json.loads((tmp_path / "out.json").read_text())["results"]) == 1


def test_output_to_a_device_needs_no_overwrite(runner, good) -> None:
    result = invoke(runner, ["scan", good[0], "-f", "json", "-o", os.devnull, *FAST])
    assert result.exit_code in (0, 1)


# ---------------------------------------------------------------------------
# 2. --resume
# ---------------------------------------------------------------------------

def test_resume_skips_recorded_files_and_rescans_a_cut_line(runner, good, tmp_path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    files = [Path(shutil.copy(p, folder / p.name)) for p in good]
    out = tmp_path / "results.jsonl"
    first = invoke(runner, ["scan", *files[:2], "-f", "jsonl", "-o", out, *FAST])
    assert first.exit_code in (0, 1)
    records = read_jsonl(out)
    assert [r["path"] for r in records] == [str(f) for f in files[:2]]
    for record, file in zip(records, files, strict=False):
        assert record["size"] == file.stat().st_size
        assert record["mtime_ns"] == file.stat().st_mtime_ns

    # the whole folder: only the files not yet recorded are scanned and appended
    resumed = invoke(runner, ["scan", folder, "-f", "jsonl", "-o", out, "--resume", *FAST])
    assert resumed.exit_code in (0, 1)
    assert "2 already recorded" in resumed.stderr
    lines = out.read_text().splitlines()
    assert lines[:2] == [json.dumps(r) for r in records]
    assert sorted(r["path"] for r in read_jsonl(out)) == sorted(str(f) for f in files)

    # a killed run leaves half a line: it is cut, and its file scanned again
    data = out.read_bytes()
    cut = data[: len(data) - len(lines[-1]) // 2 - 1]
    out.write_bytes(cut)
    again = invoke(runner, ["scan", folder, "-f", "jsonl", "-o", out, "--resume", *FAST])
    assert again.exit_code in (0, 1)
    assert f"{len(files) - 1} already recorded" in again.stderr
    paths = [r["path"] for r in read_jsonl(out)]  # every line whole again
    assert sorted(paths) == sorted(str(f) for f in files)

    # a file changed since (new mtime) is scanned again
    os.utime(files[0], ns=(files[0].stat().st_atime_ns, files[0].stat().st_mtime_ns + 10**9))
    invoke(runner, ["scan", folder, "-f", "jsonl", "-o", out, "--resume", *FAST])
    paths = [r["path"] for r in read_jsonl(out)]
    assert paths.count(str(files[0])) == 2 and len(paths) == len(files) + 1


@pytest.mark.parametrize("kept", [0, 3, 40])
def test_resume_after_a_kill_inside_the_first_line(runner, good, tmp_path, kept) -> None:
    out = tmp_path / "results.jsonl"
    invoke(runner, ["scan", good[0], "-f", "jsonl", "-o", out, *FAST])
    out.write_bytes(out.read_bytes()[:kept])  # killed while writing the first record
    result = invoke(runner, ["scan", good[0], "-f", "jsonl", "-o", out, "--resume", *FAST])
    assert result.exit_code in (0, 1), result.stderr
    assert [r["path"] for r in read_jsonl(out)] == [str(good[0])]


def test_resume_refuses_a_file_that_is_not_results(runner, good, tmp_path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"case notes\nno newline at the end")
    result = invoke(runner, ["scan", good[0], "-f", "jsonl", "-o", notes, "--resume", *FAST])
    assert result.exit_code == EXIT_USAGE
    assert "not a JSONL results file" in result.stderr
    assert notes.read_bytes() == b"case notes\nno newline at the end"


def test_resume_verify_hash_rescans_altered_content(runner, good, tmp_path) -> None:
    photo = Path(shutil.copy(good[0], tmp_path / "photo.jpg"))
    out = tmp_path / "results" / "results.jsonl"  # results never beside the evidence
    out.parent.mkdir()
    invoke(runner, ["scan", photo, "-f", "jsonl", "-o", out, *FAST])
    # same size, same mtime, other bytes: only the hash can tell
    stat = photo.stat()
    data = bytearray(photo.read_bytes())
    data[-3] ^= 0xFF
    photo.write_bytes(bytes(data))
    os.utime(photo, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    plain = invoke(runner, ["scan", photo, "-f", "jsonl", "-o", out, "--resume", *FAST])
    assert "1 already recorded" in plain.stderr
    assert len(read_jsonl(out)) == 1
    invoke(runner, ["scan", photo, "-f", "jsonl", "-o", out, "--resume", "--verify-hash", *FAST])
    records = read_jsonl(out)
    assert len(records) == 2 and records[0]["sha256"] != records[1]["sha256"]


def test_resume_keeps_exit_code_of_recorded_files(runner, tmp_path) -> None:
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    out = tmp_path / "results" / "results.jsonl"  # results never beside the evidence
    out.parent.mkdir()
    first = invoke(runner, ["scan", empty, tmp_path / "gone.jpg", "-f", "jsonl", "-o", out,
                            *FAST])
    assert first.exit_code == 3
    again = invoke(runner, ["scan", empty, tmp_path / "gone.jpg", "-f", "jsonl", "-o", out,
                            "--resume", *FAST])
    assert again.exit_code == 3  # the unreadable files are still in the results
    assert len(read_jsonl(out)) == 2  # and not recorded twice


@pytest.mark.parametrize("other", [
    ["--detector", "oneclass"],   # another detector of the same folder
    ["--fpr", "0.2"],             # the same detector at another threshold
    ["--threshold", "0.5"],
])
def test_resume_refuses_to_mix_judges(runner, good, tmp_path, other) -> None:
    """Records judged by one detector and threshold must not be continued by another:
    the file would hold two judges' verdicts under one summary and exit code."""
    out = tmp_path / "results.jsonl"
    first = invoke(runner, ["scan", good[0], "-f", "jsonl", "-o", out, *FAST])
    assert first.exit_code in (0, 1)
    before = out.read_bytes()
    mixed = invoke(runner, ["scan", *good[:2], "-f", "jsonl", "-o", out, "--resume",
                            *other, *FAST])
    assert mixed.exit_code == EXIT_USAGE
    assert "mix" in mixed.stderr and "new -o file" in mixed.stderr
    assert out.read_bytes() == before
    alike = invoke(runner, ["scan", *good[:2], "-f", "jsonl", "-o", out, "--resume", *FAST])
    assert alike.exit_code in (0, 1), alike.stderr
    assert len(read_jsonl(out)) == 2


def test_resume_never_skips_files_whose_recorded_names_look_alike(runner, tmp_path) -> None:
    """``y<0xff>.png`` is recorded as ``y\\xff.png``, the very text another file may be
    named: with the same size and mtime an earlier record cannot say which it was."""
    folder = tmp_path / "names"
    folder.mkdir()
    undecodable = folder / os.fsdecode(b"y\xff.png")
    literal = folder / "y\\xff.png"
    noise_jpeg(tmp_path / "a.jpg", seed=1)
    for path in (undecodable, literal):  # same size and mtime: only the name differs
        shutil.copy(tmp_path / "a.jpg", path)
        os.utime(path, ns=(1_700_000_000 * 10**9, 1_700_000_000 * 10**9))
    out = tmp_path / "results.jsonl"
    invoke(runner, ["scan", literal, "-f", "jsonl", "-o", out, *FAST])
    resumed = invoke(runner, ["scan", folder, "-f", "jsonl", "-o", out, "--resume", *FAST])
    assert resumed.exit_code in (0, 1), resumed.stderr
    assert "already recorded" not in resumed.stderr
    assert len(read_jsonl(out)) == 3  # the first record, then both files scanned


def test_judged_otherwise_names_what_differs() -> None:
    from aigdetect.resume import Previous, judged_otherwise
    shipped = {"name": "default", "residual_sha256": "aa"}
    previous = Previous(models={json.dumps(shipped, sort_keys=True)},
                        deciders={("residual", 3.3641)})
    assert judged_otherwise(previous, shipped, {"residual": 3.36412}) is None  # rounding
    assert "weights" in judged_otherwise(previous, {**shipped, "residual_sha256": "bb"},
                                         {"residual": 3.36412})
    assert "threshold 3.3641" in judged_otherwise(previous, shipped, {"residual": 2.0})
    assert "residual detector" in judged_otherwise(previous, shipped, {"fused": 1.18})
    assert judged_otherwise(Previous(), shipped, {"fused": 1.18}) is None  # a new file


@pytest.mark.parametrize("bad", [
    ["-f", "json", "--resume"],
    ["-f", "jsonl", "--resume"],  # no -o
    ["-f", "jsonl", "--verify-hash"],
])
def test_resume_usage_errors(runner, good, tmp_path, bad) -> None:
    args = ["scan", good[0], *bad, *FAST]
    if bad[1] == "json":
        args += ["-o", tmp_path / "out.json"]
    if "--verify-hash" in bad:
        args += ["-o", tmp_path / "out.jsonl"]
    result = invoke(runner, args)
    assert result.exit_code == EXIT_USAGE
    assert "--resume" in result.stderr


# ---------------------------------------------------------------------------
# 3. Ctrl-C: clean stop, a summary line, exit 130; workers never outlive the parent
# ---------------------------------------------------------------------------

def interrupt_after(count: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the CLI's scan raise KeyboardInterrupt after ``count`` records."""
    real_scan = scan_cli.scan

    def scan(*args: Any, **kwargs: Any):
        for number, record in enumerate(real_scan(*args, **kwargs)):
            if number == count:
                raise KeyboardInterrupt
            yield record

    monkeypatch.setattr(scan_cli, "scan", scan)


def test_ctrl_c_jsonl_then_resume(runner, good, tmp_path, monkeypatch) -> None:
    out = tmp_path / "results.jsonl"
    interrupt_after(1, monkeypatch)
    result = invoke(runner, ["scan", *good[:3], "-f", "jsonl", "-o", out, *FAST])
    assert result.exit_code == EXIT_INTERRUPTED
    assert f"interrupted: 1/3 files done; results in {out}" in result.stderr
    assert [r["path"] for r in read_jsonl(out)] == [str(good[0])]
    monkeypatch.undo()
    done = invoke(runner, ["scan", *good[:3], "-f", "jsonl", "-o", out, "--resume", *FAST])
    assert done.exit_code in (0, 1)
    assert [r["path"] for r in read_jsonl(out)] == [str(p) for p in good[:3]]


def test_ctrl_c_json_writes_partial_marked_results(runner, good, monkeypatch) -> None:
    interrupt_after(2, monkeypatch)
    result = invoke(runner, ["scan", *good[:3], "-f", "json", *FAST])
    assert result.exit_code == EXIT_INTERRUPTED
    assert "interrupted: 2/3 files done; results in stdout" in result.stderr
    document = parse_json_stdout(result.stdout)
    assert document["interrupted"] is True
    assert len(document["results"]) == 2


def _children(parent: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                pids.append(int(entry.name))
    return pids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait(condition, timeout: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Enough small files that a scan is still running when we signal it."""
    folder = tmp_path_factory.mktemp("many")
    data = noise_jpeg(folder / "0000.jpg", size=(128, 128)).read_bytes()
    for number in range(1, 400):
        (folder / f"{number:04d}.jpg").write_bytes(data)
    return folder


def _default_sigint() -> None:
    """Give the scan Ctrl-C as a terminal would. A test run started in the background
    (``cmd &`` without job control) ignores SIGINT, and an ignored SIGINT is inherited
    across exec: the scan would never see the signal this test sends."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def scan_process(many: Path, tmp_path: Path, subprocess_env: dict[str, str]):
    """A real ``scan -f jsonl -o`` of :func:`many` with 2 workers, caught while it runs;
    yields (process, its workers' pids, output, stderr file). Workers left over by a
    failing test are killed afterwards."""
    out, log = tmp_path / "results.jsonl", tmp_path / "stderr.txt"
    args = [sys.executable, "-m", "aigdetect", "scan", str(many), "-f", "jsonl", "-o", str(out),
            "--workers", "2", "--patches", "1", "--quiet"]
    with open(log, "w") as stderr:  # a file, not a pipe: orphans would hold a pipe open
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=stderr,
                                   env=subprocess_env, start_new_session=True,
                                   preexec_fn=_default_sigint)
    started = _wait(lambda: (out.is_file() and out.stat().st_size > 0)
                    or process.poll() is not None)
    workers = _children(process.pid)
    try:
        assert started and process.poll() is None, "the scan ended before it was signalled"
        assert workers
        yield process, workers, out, log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_real_process(scan_process) -> None:
    process, workers, out, log = scan_process
    os.killpg(process.pid, signal.SIGINT)  # as a terminal does: the whole process group
    process.wait(timeout=120)
    stderr = log.read_text()
    assert process.returncode == EXIT_INTERRUPTED, stderr
    assert "Traceback" not in stderr
    line = next(x for x in stderr.splitlines() if x.startswith("interrupted: "))
    done = int(line.split()[1].split("/")[0])
    assert line.endswith(f"/400 files done; results in {out}")
    records = read_jsonl(out)  # every line whole
    assert len(records) == done and 0 < done < 400
    assert _wait(lambda: not any(_alive(pid) for pid in workers), 30)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_die_with_a_killed_parent(scan_process) -> None:
    process, workers, out, _ = scan_process
    process.kill()  # SIGKILL: no cleanup code runs in the parent
    process.wait(timeout=60)
    assert _wait(lambda: not any(_alive(pid) for pid in workers), 30), "orphaned workers"
    for line in out.read_text().splitlines()[:-1]:  # all but a possibly cut last line
        json.loads(line)


# ---------------------------------------------------------------------------
# 4. every output format survives every file name
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def nasty(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("names")
    noise_jpeg(folder / NASTY, seed=1)
    noise_jpeg(folder / "[red]a \u202egpj.jpg", seed=2)  # rich markup; a bidi override
    return folder


def test_names_in_table(runner, nasty) -> None:
    result = invoke(runner, ["scan", nasty, "-f", "table", *FAST])
    assert result.exit_code in (0, 1)
    assert "\x1b" not in result.stdout and "\u202e" not in result.stdout
    assert NASTY_SHOWN in result.stdout
    assert "[red]a \\u202egpj.jpg" in result.stdout


def test_names_in_csv(runner, nasty, tmp_path) -> None:
    result = invoke(runner, ["scan", nasty, "-f", "csv", *FAST])
    assert result.exit_code in (0, 1)
    assert "\x1b" not in result.stdout
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert {Path(r["path"]).name for r in rows} == {NASTY_SHOWN, "[red]a \\u202egpj.jpg"}
    out = tmp_path / "out.csv"  # a file is UTF-8 whatever the locale
    invoke(runner, ["scan", nasty, "-f", "csv", "-o", out, *FAST])
    assert NASTY_SHOWN in out.read_bytes().decode("utf-8")


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_names_in_json(runner, nasty, fmt) -> None:
    result = invoke(runner, ["scan", nasty, "-f", fmt, *FAST])
    assert result.exit_code in (0, 1)
    assert "\x1b" not in result.stdout
    assert "\\ud" not in result.stdout  # no lone surrogates: strict parsers accept it
    if fmt == "json":
        records = parse_json_stdout(result.stdout)["results"]
    else:
        records = [json.loads(line) for line in result.stdout.splitlines()]
    # undecodable bytes as \xNN; control characters kept (JSON escapes them itself)
    names = {Path(r["path"]).name for r in records}
    assert names == {"bad\\xff\x1b[31mred.jpg", "[red]a \u202egpj.jpg"}


def test_names_with_newlines_from_stdin_with_null(runner, good, tmp_path) -> None:
    odd = Path(shutil.copy(good[0], tmp_path / "two\nlines.jpg"))
    text = f"{odd}\0{good[1]}\0"
    result = invoke(runner, ["scan", "-", "-0", "-f", "jsonl", *FAST], input=text)
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["path"] for r in records] == [str(odd), str(good[1])]
    assert all(r["error"] is None for r in records)
    long = invoke(runner, ["scan", "-", "--null", "-f", "jsonl", *FAST], input=text)
    assert [json.loads(line)["path"] for line in long.stdout.splitlines()] == \
        [str(odd), str(good[1])]


def test_null_without_stdin_is_usage_error(runner, good) -> None:
    result = invoke(runner, ["scan", good[0], "-0", *FAST])
    assert result.exit_code == EXIT_USAGE


def test_non_utf8_names_from_stdin(runner, nasty) -> None:
    name = os.fsencode(nasty / NASTY)
    result = invoke(runner, ["scan", "-", "-f", "jsonl", *FAST], input=name + b"\n")
    (record,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert record["error"] is None
    assert record["path"].endswith("bad\\xff\x1b[31mred.jpg")


# ---------------------------------------------------------------------------
# 5. non-finite numbers
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [
    ["--threshold", "nan"], ["--threshold", "inf"], ["--threshold", "-inf"],
    ["--fpr", "nan"], ["--fpr", "inf"],
])
def test_non_finite_numbers_are_usage_errors(runner, good, bad) -> None:
    result = invoke(runner, ["scan", good[0], "-f", "json", *bad, *FAST])
    assert result.exit_code == EXIT_USAGE
    assert result.stdout == ""


@pytest.mark.parametrize(("detector", "model", "method"), [
    ("residual", ResidualClassifier, "decision_function"),  # the default
    ("fused", RealPhotoDensity, "score_samples"),  # a component of a fusion
])
def test_non_finite_score_is_an_error_record(runner, good, monkeypatch, detector, model,
                                             method) -> None:
    monkeypatch.setattr(model, method, lambda self, features: np.full(len(features), np.nan))
    result = invoke(runner, ["scan", good[0], "-f", "json", "--detector", detector, *FAST])
    assert "NaN" not in result.stdout and "Infinity" not in result.stdout
    (record,) = parse_json_stdout(result.stdout)["results"]
    assert record["verdict"] == "error" and "non-finite" in record["error"]
    assert record["score"] is None and record["log_likelihood"] is None
    assert result.exit_code == 3


@pytest.mark.parametrize("failure", [
    OSError("broken data stream when writing image file"),  # an encoder's limit
    MemoryError(), RuntimeError("CUDA out of memory"),
])
def test_a_scoring_failure_is_an_error_record_and_the_batch_goes_on(
        runner, good, monkeypatch, failure) -> None:
    calls = []
    scored = ResidualClassifier.decision_function

    def fail_first(self, features):
        calls.append(1)
        if len(calls) == 1:
            raise failure
        return scored(self, features)

    monkeypatch.setattr(ResidualClassifier, "decision_function", fail_first)
    result = invoke(runner, ["scan", *good[:2], "-f", "json", *FAST])
    assert "Traceback" not in result.stderr
    first, second = sorted(parse_json_stdout(result.stdout)["results"],
                           key=lambda record: record["verdict"] != "error")
    assert first["verdict"] == "error" and "failed" in first["error"]
    assert str(failure) in first["error"] or type(failure).__name__ in first["error"]
    assert first["score"] is None
    assert second["verdict"] in ("real", "uncertain", "ai") and second["score"] is not None
    assert result.exit_code in (3, 4)


# ---------------------------------------------------------------------------
# 7. bad model folders: one line, exit 2, never a traceback
# ---------------------------------------------------------------------------

def _density_without_provenance(folder: Path) -> None:
    """The shipped density, minus the extractor hash that would catch a swap first."""
    density = RealPhotoDensity.load(default_model_dir() / DENSITY_FILE)
    density.provenance = {}
    density.save(folder / DENSITY_FILE)


def _extractor_payload(kind: str) -> Any:
    if kind == "list meta":
        return {"meta": "[]", "model": {}}
    if kind == "junk config":
        return {"meta": json.dumps({"format": "aigdetect.exif-extractor", "config": {"x": 1},
                                    "vocabularies": {}, "ordinal_tags": []}), "model": {}}
    if kind == "meta not text":
        return {"meta": torch.zeros(2), "model": {}}
    payload = torch.load(default_model_dir() / EXTRACTOR_FILE, weights_only=True)
    if kind == "wrong weights":
        payload["model"] = {k: torch.zeros(1) for k in payload["model"]}
    elif kind == "weights not a dict":
        payload["model"] = torch.zeros(3)
    return payload


@pytest.mark.parametrize("kind", ["random bytes", "list meta", "junk config", "meta not text",
                                  "wrong weights", "weights not a dict"])
def test_malformed_extractor_exit_2(runner, good, tmp_path, kind) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    _density_without_provenance(folder)
    if kind == "random bytes":
        data = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
        (folder / EXTRACTOR_FILE).write_bytes(data)
    else:
        torch.save(_extractor_payload(kind), folder / EXTRACTOR_FILE)
    check_model_error(runner, good, folder)


@pytest.mark.parametrize("kind", ["truncated", "random bytes", "header not an object",
                                  "nan calibration score"])
def test_malformed_density_exit_2(runner, good, tmp_path, kind) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(default_model_dir() / EXTRACTOR_FILE, folder / EXTRACTOR_FILE)
    shipped = (default_model_dir() / DENSITY_FILE).read_bytes()
    target = folder / DENSITY_FILE
    if kind == "truncated":
        target.write_bytes(shipped[: len(shipped) // 2])
    elif kind == "random bytes":
        target.write_bytes(np.random.default_rng(1).integers(0, 256, 999, np.uint8).tobytes())
    else:
        with np.load(default_model_dir() / DENSITY_FILE) as data:
            arrays = {k: data[k] for k in data.files}
        header = json.loads(str(arrays["header"]))
        if kind == "nan calibration score":  # the typical value and threshold become NaN
            arrays["calibration_scores"] = arrays["calibration_scores"].copy()
            arrays["calibration_scores"][0] = float("nan")
            header.get("provenance", {}).pop("extractor_sha256", None)
            arrays["header"] = np.array(json.dumps(header))
        else:
            arrays["header"] = np.array("[1, 2]")
        np.savez(target, **arrays)
    check_model_error(runner, good, folder)


def check_model_error(runner, good, folder: Path) -> None:
    result = invoke(runner, ["scan", good[0], "--model", folder, "-f", "json", *FAST])
    assert result.exit_code == EXIT_USAGE, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and len(lines) <= 2, result.stderr
    assert all(line.startswith("  hint: ") for line in lines[1:])


# ---------------------------------------------------------------------------
# 8. more JPEG and HEIF extensions
# ---------------------------------------------------------------------------

def test_jfif_jif_and_heif_are_image_extensions(tmp_path) -> None:
    for name in ("a.jfif", "b.JIF", "c.heif", "d.txt"):
        (tmp_path / name).write_bytes(b"x")
    found = [p.name for p in walk_folder(tmp_path, IMAGE_EXTENSIONS)]
    assert found == ["a.jfif", "b.JIF", "c.heif"]


@pytest.mark.skipif(not hasattr(signal, "raise_signal"), reason="needs signal.raise_signal")
def test_ctrl_c_waits_for_the_deferred_block_to_end() -> None:
    """A record is written and counted whole: Ctrl-C inside the block lands after it."""
    from aigdetect.runtime import interrupt_deferred

    handler = signal.getsignal(signal.SIGINT)
    finished = []
    with pytest.raises(KeyboardInterrupt), interrupt_deferred():
        signal.raise_signal(signal.SIGINT)
        finished.append("written")
        finished.append("counted")
    assert finished == ["written", "counted"]
    assert signal.getsignal(signal.SIGINT) is handler
    with interrupt_deferred():  # no Ctrl-C: nothing raised
        finished.append("again")
    assert finished[-1] == "again"


# ---------------------------------------------------------------------------
# lists, streaming, run headers and resumed runs (a mutation audit's findings)
# ---------------------------------------------------------------------------

def test_a_windows_line_ending_in_a_stdin_list_is_not_part_of_the_name(runner, good) -> None:
    result = invoke(runner, ["scan", "-", "-f", "jsonl", *FAST], input=f"{good[0]}\r\n")
    (record,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert record["path"] == str(good[0]) and record["error"] is None


def test_a_file_named_alone_is_read_whatever_include_says(runner, good) -> None:
    result = invoke(runner, ["scan", good[0], "--include", "png", "-f", "json", *FAST])
    (record,) = parse_json_stdout(result.stdout)["results"]
    assert record["path"] == str(good[0]) and record["error"] is None


def test_jsonl_records_reach_the_file_as_they_are_scored(runner, good, tmp_path,
                                                         monkeypatch) -> None:
    """A kill must lose at most the record in hand: each is flushed before the next."""
    out, on_disk = tmp_path / "r.jsonl", []
    scan = scan_cli.scan

    def watched(*args: Any, **kwargs: Any):
        for number, record in enumerate(scan(*args, **kwargs)):
            if number == 1:
                on_disk.append(len(out.read_text().splitlines()))
            yield record

    monkeypatch.setattr(scan_cli, "scan", watched)
    invoke(runner, ["scan", *good[:2], "-f", "jsonl", "-o", out, *FAST])
    assert on_disk == [1]


def test_the_run_file_keeps_every_earlier_run_of_a_resumed_file(runner, good, tmp_path) -> None:
    out = tmp_path / "r.jsonl"
    for count in (1, 2, 3):
        invoke(runner, ["scan", *good[:count], "-f", "jsonl", "-o", out, "-q", *FAST,
                        *(["--resume"] if count > 1 else [])])
    runs = json.loads((tmp_path / "r.jsonl.run.json").read_text())["earlier_runs"]
    assert [run["counts"]["files"] for run in runs] == [1, 2]
    invoke(runner, ["scan", good[0], "-f", "jsonl", "-o", out, "-q", "--overwrite", *FAST])
    assert json.loads((tmp_path / "r.jsonl.run.json").read_text())["earlier_runs"] == []


def test_a_resumed_run_keeps_the_exit_code_of_what_it_skipped(runner, good, tmp_path) -> None:
    out = tmp_path / "r.jsonl"
    args = ["scan", good[0], "-f", "jsonl", "-o", out, "--threshold", "-1e9", *FAST]
    assert invoke(runner, args).exit_code == 1  # everything is flagged at this threshold
    again = invoke(runner, [*args, "--resume"])
    assert "1 already recorded" in again.stderr and again.exit_code == 1


def test_an_interrupted_resume_counts_the_files_it_skipped(runner, good, tmp_path,
                                                            monkeypatch) -> None:
    out = tmp_path / "r.jsonl"
    invoke(runner, ["scan", good[0], "-f", "jsonl", "-o", out, *FAST])
    interrupt_after(1, monkeypatch)
    result = invoke(runner, ["scan", *good[:3], "-f", "jsonl", "-o", out, "--resume", *FAST])
    assert "interrupted: 2/3 files done" in result.stderr


def test_resume_after_a_last_record_without_its_newline(runner, good, tmp_path) -> None:
    out = tmp_path / "r.jsonl"
    invoke(runner, ["scan", good[0], "-f", "jsonl", "-o", out, *FAST])
    out.write_bytes(out.read_bytes().rstrip(b"\n"))
    invoke(runner, ["scan", *good[:2], "-f", "jsonl", "-o", out, "--resume", *FAST])
    assert [record["path"] for record in read_jsonl(out)] == [str(good[0]), str(good[1])]


def test_flagged_and_unreadable_together_exit_4(runner, good, tmp_path) -> None:
    result = invoke(runner, ["scan", good[0], tmp_path / "gone.jpg", "-f", "json",
                             "--threshold", "-1e9", *FAST])
    assert result.exit_code == 4


def test_a_non_finite_percentile_is_an_error_record(runner, good, monkeypatch) -> None:
    monkeypatch.setattr(Calibration, "percentile", lambda self, raw: float("nan"))
    result = invoke(runner, ["scan", good[0], "-f", "json", *FAST])
    (record,) = parse_json_stdout(result.stdout)["results"]
    assert record["verdict"] == "error" and "non-finite" in record["error"]
