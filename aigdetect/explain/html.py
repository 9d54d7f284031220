"""The case report: one self-contained HTML file.

Images are embedded as base64 data URIs and nothing is loaded from the network,
so the file can be archived with a case and opened offline; a print stylesheet
keeps it readable on paper. Every string that comes from a file (names,
metadata, EXIF) is escaped, and web addresses in it are defanged (``hxxp://``)
so that no link in a report points anywhere.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Any

from ..provenance import CAVEAT
from ..report import printable
from .case import deciding_verdict, verdict_rows
from .consistency import describe_check, describe_claim, describe_prediction
from .heatmap import region_value

STYLE = """
body { font-family: sans-serif; margin: 2em; color: #111; max-width: 1300px; }
h1 { font-size: 1.5em; } h2 { border-bottom: 2px solid #333; margin-top: 2em; }
h3 { margin-bottom: .3em; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { border: 1px solid #bbb; padding: 3px 7px; text-align: left; vertical-align: top;
         font-size: .9em; }
th { background: #eee; }
code, .hash { font-family: monospace; font-size: .85em; word-break: break-all; }
.ai { color: #a00; font-weight: bold; } .real { color: #070; } .uncertain { color: #a60; }
.error { color: #808; } .flag { color: #a00; font-weight: bold; }
.muted { color: #666; } .caveat { background: #fff6d5; padding: .4em .6em; }
img { max-width: 100%; border: 1px solid #ccc; }
@media print {
  body { margin: 0; font-size: 10pt; } h2 { page-break-before: always; }
  h2.first { page-break-before: avoid; } img { max-height: 9cm; }
  tr, img, table { page-break-inside: avoid; }
}
"""
_URL = re.compile(r"\bhttp(s?)://", re.IGNORECASE)


def text(value: Any) -> str:
    """Any value as escaped HTML text: control and bidirectional characters shown as
    ``\x1b`` / ``\u202e`` (metadata must not reorder what a reader sees), web
    addresses defanged."""
    if value is None:
        return "&ndash;"
    return html.escape(_URL.sub(r"hxxp\1[:]//", printable(str(value))))


def render(document: dict[str, Any]) -> str:
    """The whole report for one explain run (see ``cli.explain_command``)."""
    cases = document["images"]
    body = [f"<h1>aigdetect case report</h1>{_run(document)}"]
    if len(cases) > 1:
        body.append(_summary(cases))
    body += [_case(index, case) for index, case in enumerate(cases)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>aigdetect case report</title><style>{STYLE}</style></head>"
            f"<body>{''.join(body)}</body></html>\n")


def _run(document: dict[str, Any]) -> str:
    model = document["model"]
    rows = [("date of analysis (UTC)", document["analysed_at"]),
            ("tool", f"aigdetect {document['aigdetect_version']}"),
            ("detector", document["detector"]),
            ("model", f"{model.get('name')} {model.get('version')}"),
            *[(key, model[key]) for key in sorted(model) if key.endswith("_sha256")]]
    return _table(["", ""], rows, header=False)


def _summary(cases: list[dict[str, Any]]) -> str:
    rows = []
    for case in cases:
        verdict = deciding_verdict(case)
        rows.append((case["path"], _verdict(verdict.get("verdict", "error")),
                     _number(verdict.get("score")), _number(verdict.get("percentile"), 1),
                     _findings_line(case["provenance"]),
                     case["error"] or ""))
    return "<h2 class=\"first\">Summary</h2>" + _table(
        ["file", "verdict", "score", "real pct", "metadata findings", "error"], rows,
        raw_columns={1})


def _case(index: int, case: dict[str, Any]) -> str:
    first = " class=\"first\"" if index == 0 else ""
    parts = [f"<h2{first}>{text(Path(case['path']).name)}</h2>", _file(case)]
    if case["verdict"] is not None:
        parts += [_verdict_section(case["verdict"]), _where(case["heatmap"]),
                  _camera(case["camera_traces"])]
    if case.get("faces") is not None:
        parts.append(_faces(case["faces"]))
    if case["provenance"] is not None:
        parts.append(_provenance(case["provenance"]))
    return "".join(parts)


def _findings_line(provenance: dict[str, Any] | None) -> str:
    """The summary table's metadata cell: the file may not have been read at all."""
    if provenance is None:
        return "not read"
    return "; ".join(provenance["findings"]) or "none"


def _faces(faces: dict[str, Any]) -> str:
    data = base64.b64encode(Path(faces["file"]).read_bytes()).decode("ascii")
    rows = [(number, ", ".join(map(str, face["box"])), _number(face.get("score")),
             _verdict(face["verdict"]) if "verdict" in face else text(face.get("error", "")),
             _number(face.get("percentile"), 1))
            for number, face in enumerate(faces["faces"], start=1)]
    return ("<h3>Faces</h3>"
            f"<p>Each face judged alone by the <b>{text(faces['detector'])}</b> detector; the "
            f"image's face verdict is its most suspicious face: {_verdict(faces['verdict'])}."
            "</p>"
            f"<img alt=\"face boxes\" src=\"data:image/png;base64,{data}\">"
            + _table(["#", "box x, y, w, h", "score", "verdict", "real pct"], rows,
                     raw_columns={3}))


def _file(case: dict[str, Any]) -> str:
    size = f"{case['width']}x{case['height']}" if case["width"] else None
    rows = [("path", case["path"]), ("size", f"{case['size']} bytes" if case["size"] else None),
            ("SHA-256", case["sha256"]), ("format", case["format"]), ("pixels", size),
            ("notes", "; ".join(case["notes"]) or None), ("error", case["error"])]
    return "<h3>File</h3>" + _table(["", ""], rows, header=False)


def _verdict_section(verdict: dict[str, Any]) -> str:
    rows = [(name, _number(c["score"]), _verdict(c["verdict"]), _number(c["raw_score"]),
             _number(c["threshold"]), f"{_number(c['uncertain_band'][0])} .. "
             f"{_number(c['uncertain_band'][1])}", _number(c["percentile"], 1),
             f"{c['calibrated_fpr']:.1%}")
            for name, c in verdict_rows(verdict)]
    return ("<h3>How unusual: the verdict</h3>"
            f"<p>Verdict of the <b>{text(verdict['detector'])}</b> detector on "
            f"{verdict['patches']} tiles: {_verdict(verdict['verdict'])}. Score 0..1, 0.5 at "
            "the threshold; raw scores inside the uncertain band give 'uncertain'; real pct = "
            "share of held-out real photos at least as suspicious.</p>"
            + _table(["detector", "score", "verdict", "raw score", "threshold",
                      "uncertain band", "real pct", "calibrated FPR"], rows, raw_columns={2}))


def _where(heatmap: dict[str, Any]) -> str:
    data = base64.b64encode(Path(heatmap["file"]).read_bytes()).decode("ascii")
    regions = "".join(
        f"<p>Most suspicious tiles by <b>{text(name)}</b> ({text(heatmap['meanings'][name])}):"
        "</p>" + _table(["#", "x", "y", "w", "h", region_value(regions[0])[0]],
                        [(rank, r["x"], r["y"], r["w"], r["h"], region_value(r)[1])
                         for rank, r in enumerate(regions, start=1)])
        for name, regions in heatmap["top_regions"].items())
    return ("<h3>Where: evidence per tile</h3>"
            f"<p class=\"caveat\">{text(heatmap['note'])}</p>"
            f"<p class=\"muted\">{heatmap['tiles_scored']} of {heatmap['tiles_in_grid']} "
            f"tiles of {heatmap['tile_size']} px scored, at their positions in the stored "
            "pixel grid (x, y = top-left corner).</p>"
            f"<img alt=\"heat map of per-tile scores\" src=\"data:image/png;base64,{data}\">"
            + regions)


def _camera(traces: dict[str, Any]) -> str:
    if traces["status"] != "ok":
        return f"<h3>What the pixels say about the camera</h3><p>{text(traces['note'])}</p>"
    rows = []
    for row in traces["tags"]:
        predicted = describe_prediction(row)
        flag = (f"<span class=\"flag\">{describe_check(row)}</span>" if row["flag"]
                else describe_check(row))
        rows.append((text(row["tag"]), text(predicted), text(describe_claim(row)),
                     text(f"{row['metric']} {_number(row['value'])} vs chance "
                          f"{_number(row['chance'])}"), text(row["status"]), flag))
    return ("<h3>What the pixels say about the camera (EXIF-pretext heads)</h3>"
            f"<p>{text(traces['note'])}</p>"
            + _table(["tag", "pixels suggest", "file's EXIF claims", "held-out reliability",
                      "status", "consistency"], rows, raw_columns=set(range(6))))


def _provenance(provenance: dict[str, Any]) -> str:
    findings = "".join(f"<li>{text(line)}</li>" for line in provenance["findings"])
    c2pa = provenance["c2pa"]
    camera = provenance["camera_exif"]
    rows = [("container", provenance["container"]),
            ("C2PA", "; ".join([c2pa["status"], *(f"{k}: {v}" for k, v in c2pa.items()
                                                  if k != "status" and v)])),
            ("XMP DigitalSourceType", ", ".join(provenance["digital_source_type"]) or None),
            *[(f"PNG text '{g['chunk']}'", f"{g['generator']}: {g['excerpt']}")
              for g in provenance["generator_text"]],
            *[(s["tag"], f"{s['value']} ({s['kind']})") for s in provenance["software"]],
            ("camera EXIF", camera["status"] if camera["status"] == "absent" else
             f"{camera['status']}: Make {camera['make_tag']!r}, Model {camera['model_tag']!r}, "
             f"exposure tags {', '.join(camera['exposure_tags']) or 'none'}"
             + "".join(f"; {reason}" for reason in camera["reasons"]))]
    return ("<h3>What the metadata says</h3>"
            f"<p class=\"caveat\">{text(CAVEAT)}</p>"
            f"<ul>{findings or '<li>no finding</li>'}</ul>"
            + _table(["", ""], rows, header=False))


def _table(headers: list[str], rows: list[tuple[Any, ...]], header: bool = True,
           raw_columns: set[int] | None = None) -> str:
    """An HTML table; cells are escaped except ``raw_columns`` (already HTML)."""
    raw_columns = raw_columns or set()
    head = "<tr>" + "".join(f"<th>{text(h)}</th>" for h in headers) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(
        f"<td>{cell if i in raw_columns else text(cell)}</td>" for i, cell in enumerate(row))
        + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def _verdict(verdict: str) -> str:
    return f"<span class=\"{text(verdict)}\">{text(verdict)}</span>"


def _number(value: float | None, digits: int = 3) -> str | None:
    return None if value is None else f"{value:.{digits}f}"
