#!/usr/bin/env bash
# The speed benchmark on a CUDA machine, in one command: TangoFlux (real sizes, random weights unless
# TANGOFLUX=<folder> names real ones) at 50 steps in bf16 against the upstream loop, then Stable Audio 3 (the
# Small-SFX sizes, random weights, unless SA3=<folder>) at its own 8 steps, when this checkout has that
# backend. Tables on stdout; everything, with JSON, under $OUT (default benchmarks/gpu-results/).
#
#   bash benchmarks/gpu.sh                      # builds random real-size weights (~3 GB) on first use
#   TANGOFLUX=checkpoints/TangoFlux EVENTS=6 DURATION=60 bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-benchmarks/gpu-results}
DURATION=${DURATION:-60}  # seconds of story: the issue's 60 s story of 6 events
EVENTS=${EVENTS:-6}
STEPS=${STEPS:-50}  # TangoFlux's own step count: measured, not projected
SA3_STEPS=${SA3_STEPS:-8}  # Stable Audio 3's own step count
MODELS=${MODELS:-$OUT/models}
mkdir -p "$OUT" "$MODELS"
export HF_HUB_OFFLINE=1

python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this script is for a GPU machine')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

# 1. TangoFlux: upstream loop, our default path, --no-continuation, and the default under torch.compile.
if [ -z "${TANGOFLUX:-}" ]; then
  [ -f "$MODELS/decoder/tangoflux.safetensors" ] || python -m audiostory_cli.testing "$MODELS" --size real >/dev/null
  TANGOFLUX=$MODELS/decoder
fi
python benchmarks/speed.py --decoder "$TANGOFLUX" --device cuda --dtype bf16 --steps "$STEPS" \
  --duration "$DURATION" --events "$EVENTS" --batch-size auto --compile \
  --out "$OUT/tangoflux.json" | tee "$OUT/tangoflux.txt"

# 2. Peak GPU memory of a 3-minute story on the default path (18 events of 10 s; 2 steps are enough: the peak
#    is one batch of the DiT and one clip's VAE decode, whatever the step count).
python benchmarks/speed.py --decoder "$TANGOFLUX" --device cuda --dtype bf16 --steps 2 --duration 180 \
  --events 18 --batch-size auto --configs default --out "$OUT/tangoflux-3min.json" | tee "$OUT/tangoflux-3min.txt"

# 3. Stable Audio 3, when the backend is registered in this checkout (our paths only: upstream is TangoFlux's).
if python -c "import sys; from audiostory_cli import registry; sys.exit(0 if any('stable_audio_3' in n for n in registry.DECODER_BACKENDS) else 1)"; then
  if [ -z "${SA3:-}" ]; then
    SA3=$MODELS/stable-audio-3-small
    [ -f "$SA3/model_config.json" ] || python -c "import sys; from audiostory_cli.testing.stable_audio_3 import build_tiny_stable_audio_3_small as build; build(sys.argv[1], size='real')" "$SA3"
  fi
  python benchmarks/speed.py --decoder "$SA3" --device cuda --dtype bf16 --steps "$SA3_STEPS" --project-steps "$SA3_STEPS" \
    --duration "$DURATION" --events "$EVENTS" --batch-size auto --configs default,no-continuation \
    --out "$OUT/stable-audio-3.json" | tee "$OUT/stable-audio-3.txt"
else
  echo "Stable Audio 3 is not registered in this checkout (src/audiostory_cli/registry.py): skipped" | tee "$OUT/stable-audio-3.txt"
fi
