#!/bin/sh
# Run TorchServe in the foreground so the container lives exactly as long as the server.
# Accepts KServe's runtime arguments (`torchserve --start --model-store=... --ts-config=...`) as well as plain ones.
set -eu
args=""
for a in "$@"; do
  case "$a" in
    torchserve|--start|--foreground) ;;  # we always run in the foreground, whatever the caller asked
    *) args="$args $a" ;;
  esac
done
# shellcheck disable=SC2086  # word splitting of the collected arguments is intended
exec torchserve --foreground --ncs $args
