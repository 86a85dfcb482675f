#!/usr/bin/env bash
# Generates the Python stubs of every .proto under proto/ into libs/imagegen-proto/src.
#   scripts/proto.sh          regenerate (what `make proto` runs)
#   scripts/proto.sh --check  fail when the committed stubs differ from what the .proto files give
# Runs inside the project's environment (uv run): protoc comes from grpcio-tools, the typed stubs
# (.pyi, including the gRPC ones) from mypy-protobuf.
set -euo pipefail
cd "$(dirname "$0")/.."
out=libs/imagegen-proto/src
generate() {
  local dest=$1
  mkdir -p "$dest"
  mapfile -t protos < <(cd proto && find . -name '*.proto' | sed 's|^\./||' | sort)
  python -m grpc_tools.protoc -I proto \
    --python_out="$dest" --mypy_out="$dest" \
    --grpc_python_out="$dest" --mypy_grpc_out="$dest" \
    "${protos[@]}"
}
if [[ "${1:-}" == "--check" ]]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  generate "$tmp"
  if ! diff -r -q "$tmp/imagegen" "$out/imagegen" >/dev/null; then
    diff -r "$tmp/imagegen" "$out/imagegen" | head -40 || true
    echo "error: generated protobuf stubs are stale; run 'make proto' and commit the result" >&2
    exit 1
  fi
  echo "protobuf stubs are up to date"
else
  rm -rf "$out/imagegen"
  generate "$out"
  echo "generated stubs in $out/imagegen"
fi
