#!/usr/bin/env bash
# The speed benchmark on a CUDA machine, in one command: TangoFlux (real sizes, random weights unless
# TANGOFLUX=<folder> names real ones) at 50 steps in bf16 against the upstream loop, then Stable Audio 3 Small
# (the Small-SFX sizes, random weights, unless SA3=<folder>) and Medium (MEDIUM=<folder>, real weights: no
# random build) at their own 8 steps; for each, the peak GPU memory of a 3-minute story. Tables (stage
# times, FLOP/s against the GPU's measured matmul peak, the speedup and realtime-factor lines) on stdout;
# everything, with JSON, under $OUT (default benchmarks/gpu-results/).
#
#   bash benchmarks/gpu.sh                      # builds random real-size weights (~5.5 GB) on first use
#   TANGOFLUX=checkpoints/TangoFlux SA3=checkpoints/sa3-small-sfx MEDIUM=checkpoints/sa3-medium bash benchmarks/gpu.sh
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
python benchmarks/speed.py --decoder "$TANGOFLUX" --decoders tangoflux --device cuda --dtype bf16 --steps "$STEPS" \
  --duration "$DURATION" --events "$EVENTS" --batch-size auto --compile \
  --out "$OUT/tangoflux.json" | tee "$OUT/tangoflux.txt"

# 2. Peak GPU memory of a 3-minute story on the default path (18 events of 10 s; 2 steps are enough: the peak
#    is one batch of the DiT and one clip's VAE decode, whatever the step count).
python benchmarks/speed.py --decoder "$TANGOFLUX" --decoders tangoflux --device cuda --dtype bf16 --steps 2 --duration 180 \
  --events 18 --batch-size auto --configs default --out "$OUT/tangoflux-3min.json" | tee "$OUT/tangoflux-3min.txt"

# 3. Stable Audio 3 Small (the Small-SFX sizes, random weights unless SA3=<folder>) and Medium (real weights
#    only: MEDIUM=<folder>) at their own 8 steps, our paths only (upstream is TangoFlux's loop): the realtime
#    factor of the 60 s story, then the peak GPU memory of a 3-minute story (18 events of 10 s).
if [ -z "${SA3:-}" ]; then
  SA3=$MODELS/stable-audio-3-small
  [ -f "$SA3/model_config.json" ] || python -c "import sys; from audiostory_cli.testing import build_tiny_stable_audio_3_small as build; build(sys.argv[1], size='real')" "$SA3"
fi
for pair in "small:$SA3" ${MEDIUM:+"medium:$MEDIUM"}; do
  name=${pair%%:*} folder=${pair#*:}
  python benchmarks/speed.py --sa3 "$folder" --decoders sa3 --device cuda --dtype bf16 --sa3-steps "$SA3_STEPS" \
    --duration "$DURATION" --events "$EVENTS" --batch-size auto --configs default,no-continuation \
    --out "$OUT/stable-audio-3-$name.json" | tee "$OUT/stable-audio-3-$name.txt"
  python benchmarks/speed.py --sa3 "$folder" --decoders sa3 --device cuda --dtype bf16 --sa3-steps "$SA3_STEPS" \
    --duration 180 --events 18 --batch-size auto --configs default \
    --out "$OUT/stable-audio-3-$name-3min.json" | tee "$OUT/stable-audio-3-$name-3min.txt"
done
