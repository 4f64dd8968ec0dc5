#!/usr/bin/env bash
# Peak RSS of `avbind data prepare` on one long 1280x720 60 fps EPIC-layout video with audio, and of
# one training epoch reading crops from the cache it wrote (the default, activation checkpointing on
# the CPU, and with it off), each measured with /usr/bin/time -v.
#
#   tools/measure_memory.sh [--minutes N] [WORK]
#
# WORK (default: a new temp dir) holds the generated video, the annotations, the cache and the
# logs; a video already there with the right duration is reused. N defaults to 30; the figures go
# to WORK/memory.json, and at 30 minutes also to tools/memory-cpu-2core.json (quoted in the README).
# Needs ffmpeg, ffprobe, GNU time at /usr/bin/time and avbind installed.
set -euo pipefail

MINUTES=30
WORK=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --minutes) MINUTES="$2"; shift 2 ;;
    --minutes=*) MINUTES="${1#*=}"; shift ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) WORK="$1"; shift ;;
  esac
done
[[ "$MINUTES" =~ ^[0-9]+$ && "$MINUTES" -ge 1 ]] || { echo "--minutes must be a whole number >= 1" >&2; exit 2; }
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${WORK:-$(mktemp -d -t avbind-memory-XXXXXX)}"
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"

WIDTH=1280 HEIGHT=720 FPS=60 CONFIG=avbind-s BOUND_MB=1536
SECONDS_TOTAL=$((MINUTES * 60))
ANN="$WORK/annotations" VIDEOS="$WORK/videos" CACHE="$WORK/cache" OUT="$WORK/run" LOGS="$WORK/logs"
VIDEO="$VIDEOS/P01/videos/P01_101.MP4"
mkdir -p "$ANN" "$(dirname "$VIDEO")" "$LOGS"
echo "work folder: $WORK" >&2

# 1. The video: test pattern and a tone, H.264 + AAC, a keyframe every 2 s.
duration_ok() {
  [[ -f "$VIDEO" ]] || return 1
  local d
  d="$(ffprobe -v error -show_entries format=duration -of default=nw=1:nk=1 "$VIDEO" 2>/dev/null || true)"
  [[ -n "$d" ]] && awk -v d="$d" -v want="$SECONDS_TOTAL" 'BEGIN { exit !(d > want - 1 && d < want + 1) }'
}
if duration_ok; then
  echo "reusing $VIDEO" >&2
else
  echo "generating a ${MINUTES}-minute ${WIDTH}x${HEIGHT} ${FPS} fps video (ffmpeg, ultrafast)" >&2
  ffmpeg -hide_banner -loglevel error -y \
    -f lavfi -i "testsrc2=size=${WIDTH}x${HEIGHT}:rate=${FPS}" \
    -f lavfi -i "sine=frequency=440:beep_factor=4:sample_rate=48000" \
    -t "$SECONDS_TOTAL" -c:v libx264 -preset ultrafast -g 120 -pix_fmt yuv420p \
    -c:a aac -b:a 128k -ac 2 -shortest "$VIDEO.part.mp4"
  mv "$VIDEO.part.mp4" "$VIDEO"
  duration_ok || { echo "generated $VIDEO has the wrong duration" >&2; exit 1; }
fi

# 2. Annotations: one 4 s action every 20 s over the whole video (the last ends 3 s before its end,
# so the clip to decode, which runs 2 s past the last action, covers all of it).
SHARED=/work/shared/data/epic-kitchens-100
for kind in verb noun; do
  if [[ -f "$SHARED/EPIC_100_${kind}_classes.csv" ]]; then
    cp "$SHARED/EPIC_100_${kind}_classes.csv" "$ANN/"
  else
    python3 - "$ANN/EPIC_100_${kind}_classes.csv" "$kind" <<'PY'
import csv, sys
path, kind = sys.argv[1:]
keys = {"verb": ["take", "put", "wash", "open", "close"], "noun": ["tap", "spoon", "plate", "cupboard", "knife"]}[kind]
with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["id", "key", "instances", "category"])
    for i, k in enumerate(keys):
        w.writerow([i, k, str([k]), "misc"])
PY
  fi
done
python3 - "$ANN" "$SECONDS_TOTAL" "$FPS" <<'PY'
import csv, sys
from pathlib import Path
ann, total, fps = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
def names(kind):
    with open(ann / f"EPIC_100_{kind}_classes.csv", newline="", encoding="utf-8-sig") as f:
        return [row["key"] for row in csv.DictReader(f)]
verbs, nouns = names("verb")[:5], names("noun")[:5]
def stamp(s):
    return f"{int(s // 3600):02d}:{int(s % 3600 // 60):02d}:{s % 60:05.2f}"
with open(ann / "EPIC_100_train.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["narration_id", "participant_id", "video_id", "narration_timestamp", "start_timestamp",
                "stop_timestamp", "start_frame", "stop_frame", "narration", "verb", "verb_class", "noun",
                "noun_class", "all_nouns", "all_noun_classes"])
    for i, start in enumerate(range(13, total - 3, 20)):
        v, n = i % len(verbs), (i // len(verbs) + i) % len(nouns)
        stop = start + 4
        w.writerow([f"P01_101_{i}", "P01", "P01_101", stamp(start), stamp(start), stamp(stop),
                    start * fps, stop * fps, f"{verbs[v]} {nouns[n]}", verbs[v], v, nouns[n], n,
                    str([nouns[n]]), str([n])])
PY
rm -f "$ANN/EPIC_100_validation.csv"  # only the train split is measured

# 3-4. The two measured commands, from a clean cache and output folder.
rm -rf "$CACHE" "$OUT"
measure() {  # name, command...: runs it under /usr/bin/time -v; its log and time report in $LOGS
  local name="$1"; shift
  echo "measuring $name: $*" >&2
  if ! /usr/bin/time -v -o "$LOGS/$name.time" "$@" >"$LOGS/$name.log" 2>&1; then
    echo "$name failed; the end of $LOGS/$name.log:" >&2
    tail -n 30 "$LOGS/$name.log" >&2
    exit 1
  fi
}
measure prepare avbind data prepare --annotations "$ANN" --videos "$VIDEOS" --cache "$CACHE" --split train \
  --config "$CONFIG" --workers 1 --quiet
measure train avbind train --annotations "$ANN" --videos "$VIDEOS" --cache "$CACHE" --out "$OUT" \
  --config "$CONFIG" --device cpu --epochs 1 --crops-per-video 64 --batch-size 8 --threads 2
# The same batch of 8 keeping every activation for backward (the default on CUDA): activations
# (~0.3 GB per avbind-s crop at 128 px), not the data, are what a batch costs.
rm -rf "$OUT"
measure train_checkpointing_off avbind train --annotations "$ANN" --videos "$VIDEOS" --cache "$CACHE" \
  --out "$OUT" --config "$CONFIG" --device cpu --epochs 1 --crops-per-video 64 --batch-size 8 --threads 2 \
  --checkpointing off

# 5. The figures.
MACHINE="$(lscpu | sed -n 's/^Model name: *//p' | head -n 1), $(nproc) cores"
CACHE_MB="$(du -sm "$CACHE" | cut -f1)"
VIDEO_BYTES="$(stat -c %s "$VIDEO")"
RESULT="$(python3 - "$LOGS" "$MACHINE" "$MINUTES" "$WIDTH" "$HEIGHT" "$FPS" "$VIDEO_BYTES" "$CACHE_MB" "$BOUND_MB" <<'PY'
import json, re, sys
logs, machine, minutes, width, height, fps, size, cache_mb, bound = sys.argv[1:]
def figures(name):
    text = open(f"{logs}/{name}.time").read()
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text).group(1)
    seconds = sum(float(part) * 60 ** i for i, part in enumerate(reversed(wall.split(":"))))
    return {"peak_rss_mb": round(rss_kb / 1024, 1), "wall_s": round(seconds, 1)}
prepare, train, kept = figures("prepare"), figures("train"), figures("train_checkpointing_off")
print(json.dumps({
    "machine": machine,
    "video": {"minutes": int(minutes), "width": int(width), "height": int(height), "fps": int(fps),
              "bytes": int(size)},
    "prepare": prepare,
    "train_from_cache": train,
    "train_from_cache_checkpointing_off": kept,
    "cache_mb": int(cache_mb),
    "bound_mb": int(bound),
    "within_bound": {"prepare": prepare["peak_rss_mb"] <= int(bound), "train": train["peak_rss_mb"] <= int(bound),
                     "train_checkpointing_off": kept["peak_rss_mb"] <= int(bound)},
}, indent=2))
PY
)"
echo "$RESULT" >"$WORK/memory.json"
if [[ "$MINUTES" -eq 30 ]]; then
  echo "$RESULT" >"$REPO/tools/memory-cpu-2core.json"
fi
echo "$RESULT"
