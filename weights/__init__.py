"""The default detector shipped with aigdetect (installed as ``aigdetect.weights``).

``extractor.pt`` is the EXIF-pretext extractor, ``density.npz`` the density of its
features on real photos (one-class), ``binary.pt`` the binary detector,
``residual.npz`` the residual classifier, ``calibration.json`` their thresholds and
fusion weights, ``faces/`` the face detector; MODEL_CARD.md says how each was made.
"""
