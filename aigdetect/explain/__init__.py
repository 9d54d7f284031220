"""``aigdetect explain``: why an image scored as it did.

``heatmap`` (where: each tile scored alone, at its position), ``consistency``
(the EXIF-pretext heads' reading of the pixels beside the file's EXIF),
``provenance`` (what the metadata says), ``case`` (one image's case from all of
them), ``console`` and ``html`` (the case for people: terminal or report file).
"""
