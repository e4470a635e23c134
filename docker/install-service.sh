#!/bin/sh
# Install one service, libs/common and their locked dependencies (nothing else: no dev tools,
# no other service) into a virtualenv, as built wheels rather than editable links.
#
#   docker/install-service.sh proxy|collector|dispatcher TARGET_VENV
#
# docker/Dockerfile runs it to build each image; tests/chart/test_images.py runs the same script
# on a copy of the same build context, then starts the console script it installed.
set -eu

service="${1:?usage: install-service.sh proxy|collector|dispatcher TARGET_VENV}"
target="${2:?usage: install-service.sh proxy|collector|dispatcher TARGET_VENV}"
case "$service" in
  proxy|collector|dispatcher) ;;
  *) echo "install-service.sh: unknown service '$service'" >&2; exit 2 ;;
esac

cd "$(dirname "$0")/.."
UV_PROJECT_ENVIRONMENT="$target" exec "${UV:-uv}" sync \
  --frozen --no-dev --no-editable --compile-bytecode \
  --package "llm-gateway-$service"
