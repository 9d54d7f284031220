#!/usr/bin/env bash
# Rebuild the shipped detector (weights/) and its model-card numbers from ../shared/data.
# Exactly the commands recorded in weights/MODEL_CARD.md. Takes about 1.5 h on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=runs/data
python benchmarks/link_shared_photos.py --out "$DATA"

# 1. EXIF-pretext extractor on the permissively licensed (ship_ok) photos only, 58 min budget
aigdetect train "$DATA/ship_ok" -o runs/extractor.pt --epochs 16 --batch-size 16 --patches 16 \
  --workers 1 --seed 0 --max-minutes 58 2> runs/train.log

# 2. density of its features on the same photos; threshold at 2 % FPR on held-out cameras
aigdetect fit-gmm "$DATA/ship_ok" --extractor runs/extractor.pt -o weights/ --patches "${PATCHES:-32}" \
  --fpr 0.02 --seed 0 --workers 1 --no-cache

# 3. evaluation: real photos never used for the weights (not ship_ok) against AI images
EVAL=(--real "$DATA/not_ship_ok" --real "$DATA/faces_real" --fake "$DATA/faces_ai"
      --fake "$DATA/ai_general_latent" --fake "$DATA/ai_general_disco" --workers 1)
aigdetect evaluate "${EVAL[@]}" -f json --plot runs/roc_as_is.png > runs/eval_as_is.json
aigdetect evaluate "${EVAL[@]}" --matched-processing -f json --plot runs/roc_matched.png \
  > runs/eval_matched.json
