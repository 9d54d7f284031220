"""What a file's metadata says about where it came from: C2PA content credentials,
the IPTC/XMP digital source type, generator parameters in PNG text chunks, EXIF
software and camera tags.

Metadata can be stripped or forged, so every finding here is a lead, not proof:
its absence says nothing, and its presence says what some program wrote. Only
metadata is read (never pixels), the file is opened read-only, and nothing is
fetched from the network (C2PA remote manifests and OCSP are switched off).
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

from PIL import Image

from .exif import labels_from_raw, read_raw_exif, to_text
from .patches import image_formats

CAVEAT = "metadata can be stripped or forged: a lead, not proof"
#: Bytes of a file searched for an XMP packet (XMP sits near the start in JPEG, PNG, WebP).
MAX_SEARCH_BYTES = 64 * 1024 * 1024
#: Characters of a generator's text kept in a finding (prompts and workflows run long).
EXCERPT_CHARS = 300

#: PNG text chunks that generators write, and who writes them.
GENERATOR_CHUNKS = {
    "parameters": "Stable Diffusion web UI (AUTOMATIC1111/Forge) generation parameters",
    "prompt": "ComfyUI prompt graph",
    "workflow": "ComfyUI workflow",
    "invokeai_metadata": "InvokeAI metadata",
    "sd-metadata": "InvokeAI (legacy) metadata",
    "dream": "InvokeAI (legacy) dream command",
}
#: Names in EXIF Software/Artist or PNG Software/Comment that mean a generator wrote it.
GENERATORS = (
    "stable diffusion", "stablediffusion", "midjourney", "dall-e", "dall·e", "dalle",
    "firefly", "novelai", "comfyui", "automatic1111", "invokeai", "leonardo", "imagen",
    "gemini", "flux", "openai", "chatgpt", "image creator", "craiyon", "nightcafe",
    "dreamstudio", "ideogram", "runway", "kandinsky", "stability ai",
)
#: Names that mean an editor touched the file (processed, not necessarily generated).
EDITORS = (
    "photoshop", "lightroom", "gimp", "affinity", "capture one", "snapseed", "pixelmator",
    "paint.net", "darktable", "rawtherapee", "luminar", "canva", "picsart", "facetune",
)
#: IPTC digital source types that mean generated or partly generated.
AI_SOURCE_TYPES = ("trainedAlgorithmicMedia", "compositeWithTrainedAlgorithmicMedia",
                   "algorithmicMedia", "compositeSynthetic")
_SOURCE_TYPE = re.compile(rb"digitalsourcetype/([A-Za-z]+)", re.IGNORECASE)
_XMP_PACKET = re.compile(rb"<x:xmpmeta.*?</x:xmpmeta>", re.DOTALL)
#: Containers a camera writes; a camera make inside another one was put there later.
CAMERA_CONTAINERS = ("JPEG", "MPO", "TIFF", "HEIF", "AVIF")
_MIME = {"JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp",
         "TIFF": "image/tiff", "HEIF": "image/heif", "AVIF": "image/avif", "GIF": "image/gif",
         "BMP": "image/bmp"}


def read_provenance(path: str | Path) -> dict[str, Any]:
    """Every metadata finding of one file (never raises: a reader that fails says so)."""
    container, text = _container(path)
    raw_exif = read_raw_exif(path)
    generator_text = generator_chunks(text)
    software = software_tags(raw_exif, text)
    result = {
        "caveat": CAVEAT,
        "container": container,
        "c2pa": read_c2pa(path, container),
        "digital_source_type": digital_source_types(path),
        "generator_text": generator_text,
        "software": software,
        "camera_exif": camera_summary(raw_exif, container, generator_text, software),
    }
    result["findings"] = findings(result)
    return result


def _container(path: str | Path) -> tuple[str | None, dict[str, str]]:
    """The file's format (by content) and its text chunks (PNG tEXt/zTXt/iTXt)."""
    try:
        with open(path, "rb") as handle, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(handle, formats=image_formats()) as image:
                text = {str(k): str(v) for k, v in getattr(image, "text", {}).items()}
                return image.format, text
    except Exception:  # not an image, or damaged: the other readers still run
        return None, {}


def generator_chunks(text: dict[str, str]) -> list[dict[str, str]]:
    """PNG text chunks a generator wrote: which chunk, which generator, an excerpt."""
    found = [{"chunk": key, "generator": GENERATOR_CHUNKS[key.lower()],
              "excerpt": _excerpt(value)}
             for key, value in text.items() if key.lower() in GENERATOR_CHUNKS]
    for key in ("Software", "Comment", "Source", "Description"):
        value = text.get(key, "")
        name = _named(value, GENERATORS)
        if name is not None:
            found.append({"chunk": key, "generator": name, "excerpt": _excerpt(value)})
    return found


def software_tags(raw_exif: dict[str, Any], text: dict[str, str]) -> list[dict[str, str]]:
    """EXIF Software/Artist/ImageDescription (and PNG Software) naming a generator or
    an editor."""
    values = {f"EXIF {tag}": to_text(raw_exif.get(tag))
              for tag in ("Software", "Artist", "ImageDescription", "ProcessingSoftware")}
    values["PNG Software"] = text.get("Software")
    found = []
    for where, value in values.items():
        if not value:
            continue
        generator, editor = _named(value, GENERATORS), _named(value, EDITORS)
        kind = "generator" if generator else "editor" if editor else "other"
        found.append({"tag": where, "value": _excerpt(value), "kind": kind,
                      "names": generator or editor or ""})
    return found


def digital_source_types(path: str | Path) -> list[str]:
    """IPTC digital source types named in the file's XMP packets (e.g.
    ``trainedAlgorithmicMedia``), by a search of the raw bytes: XMP sits in APP1
    (JPEG), iTXt (PNG) or a chunk of its own (WebP), always as plain text."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_SEARCH_BYTES)
    except OSError:
        return []
    found = []
    for packet in _XMP_PACKET.findall(data):
        found += [m.decode("ascii") for m in _SOURCE_TYPE.findall(packet)]
    return list(dict.fromkeys(found))


def camera_summary(raw_exif: dict[str, Any], container: str | None,
                   generator_text: list[dict[str, str]],
                   software: list[dict[str, str]]) -> dict[str, Any]:
    """Camera EXIF: ``present``, ``absent``, or ``inconsistent`` (camera tags in a
    container cameras do not write, or beside a generator's traces)."""
    labels = labels_from_raw(raw_exif)
    shot = [t for t in ("exposure_time", "fnumber", "iso", "focal_length")
            if getattr(labels, t) is not None]
    if labels.make is None and labels.model is None and not shot:
        return {"status": "absent", "make": None, "model": None, "exposure_tags": [],
                "reasons": []}
    reasons = []
    if container is not None and container not in CAMERA_CONTAINERS:
        reasons.append(f"camera EXIF inside a {container} file, a format cameras do not write")
    if generator_text or any(s["kind"] == "generator" for s in software):
        reasons.append("camera EXIF beside a generator's metadata")
    if labels.make is not None and not shot:
        reasons.append("a camera make but no exposure tags")
    return {"status": "inconsistent" if reasons else "present", "make": labels.make,
            "model": labels.model, "exposure_tags": shot, "reasons": reasons}


def read_c2pa(path: str | Path, container: str | None) -> dict[str, Any]:
    """C2PA content credentials, read offline with c2pa-python (optional extra
    ``aigdetect[c2pa]``): claim generator, actions, digital source types and the
    validation state. Status ``absent``, ``present``, ``unavailable`` or ``error``."""
    try:
        import c2pa  # optional dependency
    except ImportError:
        return {"status": "unavailable",
                "note": "c2pa-python is not installed (pip install 'aigdetect[c2pa]')"}
    mime = _MIME.get(container or "")
    if mime is None:
        return {"status": "absent", "note": "no C2PA reader for this format"}
    try:
        settings = c2pa.Settings.from_dict(
            {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}})
        with open(path, "rb") as handle:
            reader = c2pa.Reader.try_create(mime, handle, context=c2pa.Context(settings))
            if reader is None:
                return {"status": "absent"}
            with reader:
                store = json.loads(reader.json())
                state = reader.get_validation_state()
    except Exception as error:  # a damaged manifest must not end the report
        return {"status": "error", "note": f"{type(error).__name__}: {error}"[:EXCERPT_CHARS]}
    return {"status": "present", "validation_state": str(state) if state else None,
            **_active_manifest(store)}


def _active_manifest(store: dict[str, Any]) -> dict[str, Any]:
    """Claim generator, actions and digital source types of the active manifest."""
    manifest = store.get("manifests", {}).get(store.get("active_manifest") or "", {})
    actions, sources = [], []
    for assertion in manifest.get("assertions", []):
        if str(assertion.get("label", "")).startswith("c2pa.actions"):
            for action in assertion.get("data", {}).get("actions", []):
                actions.append(str(action.get("action")))
                source = action.get("digitalSourceType")
                if source:
                    sources.append(str(source).rsplit("/", 1)[-1])
    generator = manifest.get("claim_generator") or ", ".join(
        str(info.get("name")) for info in manifest.get("claim_generator_info", []))
    return {"claim_generator": generator or None, "actions": actions,
            "digital_source_types": list(dict.fromkeys(sources)),
            "validation_errors": [str(s.get("code")) for s in
                                  store.get("validation_status", []) or []][:10]}


def findings(provenance: dict[str, Any]) -> list[str]:
    """One line per finding, most telling first; empty when the metadata says nothing."""
    lines = []
    c2pa = provenance["c2pa"]
    if c2pa["status"] == "present":
        sources = ", ".join(c2pa.get("digital_source_types", [])) or "no source type"
        lines.append(f"C2PA credentials by {c2pa.get('claim_generator') or 'unknown'} "
                     f"({sources}; validation {c2pa.get('validation_state') or 'unknown'})")
    for source in provenance["digital_source_type"]:
        kind = "AI-generated" if source in AI_SOURCE_TYPES else "declared"
        lines.append(f"XMP DigitalSourceType {source} ({kind})")
    for chunk in provenance["generator_text"]:
        lines.append(f"PNG text '{chunk['chunk']}': {chunk['generator']}")
    for tag in provenance["software"]:
        if tag["kind"] != "other":
            lines.append(f"{tag['tag']} names {tag['kind']} {tag['names']}: {tag['value']}")
    camera = provenance["camera_exif"]
    if camera["status"] == "inconsistent":
        lines += [f"camera EXIF inconsistent: {reason}" for reason in camera["reasons"]]
    return lines


def short_summary(provenance: dict[str, Any]) -> str:
    """A table cell: the findings, or what the camera EXIF is when there are none."""
    return "; ".join(provenance["findings"]) or f"camera EXIF {provenance['camera_exif']['status']}"


def _named(value: str | None, names: tuple[str, ...]) -> str | None:
    lowered = (value or "").lower()
    hits = [name for name in names if name in lowered]
    return ", ".join(hits) if hits else None


def _excerpt(value: str) -> str:
    value = " ".join(value.split())
    return value if len(value) <= EXCERPT_CHARS else value[: EXCERPT_CHARS - 3] + "..."
