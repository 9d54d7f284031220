"""The default detector shipped with aigdetect (installed as ``aigdetect.weights``).

``extractor.pt`` is the EXIF-pretext extractor, ``density.npz`` the calibrated
density of its features on real photos; MODEL_CARD.md says how both were made.
"""
