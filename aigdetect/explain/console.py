"""The explain document as rich tables, for people at a terminal (stdout).

Every string from a file goes through ``printable`` and into ``Text``, never
into markup: a name like ``a[/b].jpg`` or one holding escape sequences is shown,
not interpreted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..provenance import CAVEAT
from ..report import printable
from .case import verdict_rows
from .consistency import describe_check, describe_claim, describe_prediction
from .heatmap import region_value


def cell(value: Any) -> Text:
    return Text("-" if value is None else printable(str(value)))


def add_columns(table: Table, names: Sequence[str]) -> None:
    """Columns that fold a word too long for them onto the next line instead of cutting
    it with an ellipsis: at 80 columns three rows read ``exposure_…`` (which one
    disagrees?) and a cut number is a wrong number."""
    for name in names:
        table.add_column(name, overflow="fold", no_wrap=False)


def print_document(document: dict[str, Any], console: Console) -> None:
    """Each image's sections in turn: file, verdict, where, camera traces, metadata."""
    console.print(Text(f"aigdetect {document['aigdetect_version']} explain, detector "
                       f"{document['detector']} of model {printable(document['model']['name'])}"
                       f", {document['analysed_at']}", style="bold"))
    for case in document["images"]:
        console.rule()  # the path below it, whole: a rule's title is cut to fit
        console.print(Text(printable(case["path"]), style="bold"))
        console.print(cell(file_line(case)))
        for note in case["notes"]:
            console.print(Text(f"note: {printable(note)}", style="yellow"))
        if case["error"]:
            console.print(Text(f"error: {printable(case['error'])}", style="magenta"))
        if case["verdict"] is not None:
            console.print(verdict_table(case["verdict"]))
            heatmap = case["heatmap"]
            console.print(Text(heatmap["note"], style="italic"))
            console.print(cell(f"heat map: {heatmap['file']}"))
            console.print(regions_table(heatmap))
            console.print(camera_table(case["camera_traces"]))
        if case.get("faces") is not None:
            console.print(faces_table(case["faces"]))
        if case["provenance"] is None:  # the file could not be opened at all
            console.print(cell("metadata: not read"))
        else:
            console.print(provenance_table(case["provenance"]))


def file_line(case: dict[str, Any]) -> str:
    """Hash, size, format and pixels: as much as was read (nothing of a missing file)."""
    parts = [f"sha256 {case['sha256']}" if case["sha256"] else None,
             f"{case['size']} bytes" if case["size"] is not None else None,
             case["format"],
             f"{case['width']}x{case['height']}" if case["width"] else None]
    return "  ".join(part for part in parts if part) or "not read"


def verdict_table(verdict: dict[str, Any]) -> Table:
    """Each detector's numbers; the caption says why 'real pct' and the verdict can
    seem to disagree (the percentile pools every kind of real photo, the threshold
    holds for each kind)."""
    table = Table(title=f"How unusual ({verdict['patches']} tiles)", title_justify="left",
                  caption="real pct: share of all calibration photos at least this "
                  "suspicious (every kind pooled); the threshold holds for each kind "
                  "(camera, processed, ...) alone, so a low real pct can still be 'real'.",
                  caption_justify="left")
    add_columns(table, ("detector", "score", "verdict", "raw score", "threshold",
                        "uncertain band", "real pct", "calib. FPR"))
    for name, c in verdict_rows(verdict):
        low, high = c["uncertain_band"]
        table.add_row(name, f"{c['score']:.3f}", c["verdict"], f"{c['raw_score']:.3f}",
                      f"{c['threshold']:.3f}", f"{low:.3f} .. {high:.3f}",
                      f"{c['percentile']:.1f}", f"{c['calibrated_fpr']:.1%}")
    return table


def faces_table(faces: dict[str, Any]) -> Table:
    """``explain --faces``: one row per face, numbered as in the drawing."""
    table = Table(title=Text(printable(f"Faces ({faces['detector']}): image verdict "
                                       f"{faces['verdict']}; boxes drawn in {faces['file']}")),
                  title_justify="left")
    add_columns(table, ("#", "box x, y, w, h", "score", "verdict", "real pct", "tiles"))
    for number, face in enumerate(faces["faces"], start=1):
        table.add_row(str(number), ", ".join(map(str, face["box"])),
                      f"{face['score']:.3f}" if "score" in face else "-",
                      face.get("verdict", face.get("error", "-")),
                      f"{face['percentile']:.1f}" if "percentile" in face else "-",
                      str(face["patches"]))
    return table


def regions_table(heatmap: dict[str, Any]) -> Table:
    table = Table(title=f"Most suspicious tiles ({heatmap['tiles_scored']} of "
                  f"{heatmap['tiles_in_grid']} scored; x, y = top-left, native pixels)",
                  title_justify="left")
    add_columns(table, ("component", "#", "x", "y", "size", "tile value"))
    for name, regions in heatmap["top_regions"].items():
        for rank, region in enumerate(regions, start=1):
            key, value = region_value(region)
            table.add_row(name, str(rank), str(region["x"]), str(region["y"]),
                          str(region["w"]), f"{key} {value}")
    return table


def camera_table(traces: dict[str, Any]) -> Table | Text:
    if traces["status"] != "ok":
        return cell(traces["note"])
    table = Table(title="What the pixels say about the camera", caption=traces["note"],
                  title_justify="left", caption_justify="left")
    add_columns(table, ("tag", "pixels suggest", "EXIF claims", "held-out", "status", "check"))
    for row in traces["tags"]:
        predicted = describe_prediction(row)
        check = describe_check(row).upper() if row["flag"] else describe_check(row)
        reliability = "-" if row["value"] is None else (
            f"{row['metric']} {row['value']:.2f} / chance {row['chance']:.2f}")
        table.add_row(row["tag"], cell(predicted), cell(describe_claim(row)), reliability,
                      row["status"], Text(check, style="bold red" if row["flag"] else ""))
    return table


def provenance_table(provenance: dict[str, Any]) -> Table:
    table = Table(title=f"What the metadata says ({CAVEAT})", title_justify="left",
                  show_header=False)
    add_columns(table, ("finding",))
    for line in provenance["findings"] or ["no finding"]:
        table.add_row(cell(line))
    camera = provenance["camera_exif"]
    exif = (f"camera EXIF {camera['status']}" if camera["status"] == "absent" else
            f"camera EXIF {camera['status']} (Make {camera['make_tag']!r}, Model "
            f"{camera['model_tag']!r})")
    table.add_row(cell(f"{exif}; C2PA {provenance['c2pa']['status']}"))
    return table
