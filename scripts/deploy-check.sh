#!/usr/bin/env bash
# Validates everything under deploy/ and the files that build and run the containers, offline, with the
# tools of the project's environment (make setup): what `make deploy-check` (and so `make test`) runs.
#   1. hadolint on every Dockerfile
#   2. docker-compose.yml against the compose-spec schema (check-jsonschema's vendored copy); plus
#      `docker compose config` when a compose binary is installed (none is needed)
#   3. every NATS configuration parsed by nats-server itself (-t)
#   4. kubectl kustomize of every overlay, validated by kubernetes-validate (strict, oldest and newest
#      supported Kubernetes); custom resources (KEDA, Prometheus Operator) by their CRD models
#   5. scripts/check_deploy.py: compose conventions, Dockerfile conventions, sync_interval always,
#      rules and dashboard (metric names against docs/architecture.md), the rendered overlays
#   6. promtool check rules/config and the rules' unit tests (deploy/prometheus/tests) when promtool
#      is installed (optional: Debian's `prometheus` package has it)
set -euo pipefail
cd "$(dirname "$0")/.."

# The oldest Kubernetes we support (the preStop `sleep` action needs 1.30) and the newest.
K8S_VERSIONS=(1.30.0 1.37.0)
# Kinds that kubernetes-validate has no schema for; check_deploy.py validates them against their CRDs.
CRD_KINDS='ScaledObject|ServiceMonitor|PrometheusRule'

started=$SECONDS
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=0
fail() { echo "  FAIL $*"; failed=1; }
ok() { echo "  ok   $*"; }

echo "== Dockerfiles (hadolint)"
mapfile -t dockerfiles < <(git ls-files --cached --others --exclude-standard -- 'Dockerfile' '*/Dockerfile' '*.Dockerfile' 2>/dev/null || ls Dockerfile)
for dockerfile in "${dockerfiles[@]}"; do
  if out=$(hadolint "$dockerfile" 2>&1); then ok "hadolint $dockerfile"; else fail "hadolint $dockerfile"; echo "$out"; fi
done

echo "== docker compose"
if out=$(check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml 2>&1); then
  ok "docker-compose.yml valid against the compose-spec schema"
else
  fail "docker-compose.yml against the compose-spec schema"; echo "$out"
fi
compose=()
if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1 && docker-compose version 2>/dev/null | grep -q 'v2\.'; then
  compose=(docker-compose)
fi
if ((${#compose[@]})); then
  # Only .env.example: the result must not depend on the caller's environment or .env.
  # Any output counts as a failure too: some wrappers of the binary lose its exit status.
  if out=$(env -i PATH="$PATH" "${compose[@]}" --env-file .env.example -f docker-compose.yml config --quiet 2>&1) \
    && [[ -z "$out" ]]; then
    ok "${compose[*]} config (with .env.example)"
  else
    fail "${compose[*]} config"; echo "$out"
  fi
else
  echo "  note no docker compose binary here: the compose file is checked by schema and check_deploy.py only"
fi

echo "== Kubernetes (kubectl kustomize | kubernetes-validate)"
overlay_args=()
for dir in deploy/k8s/overlays/*/; do
  overlay=$(basename "$dir")
  rendered="$tmp/$overlay.yaml"
  if ! kubectl kustomize "$dir" >"$rendered" 2>"$tmp/err"; then
    fail "kubectl kustomize $dir"; cat "$tmp/err"; continue
  fi
  overlay_args+=(--overlay "$overlay=$rendered")
  for version in "${K8S_VERSIONS[@]}"; do
    out=$(kubernetes-validate --strict --quiet -k "$version" "$rendered" 2>&1) && status=0 || status=$?
    # Unknown kinds are only warnings to kubernetes-validate: allow the custom resources we check
    # ourselves, fail on anything else (a typo in an apiVersion would otherwise pass).
    unexpected=$(grep -E '^WARN' <<<"$out" | grep -vE "for kind ($CRD_KINDS) " || true)
    if ((status == 0)) && [[ -z "$unexpected" ]]; then
      ok "$overlay: $(grep -c '^kind:' "$rendered") objects valid for Kubernetes $version (strict)"
    else
      fail "$overlay: kubernetes-validate -k $version"; grep -vE "for kind ($CRD_KINDS) " <<<"$out" || true
    fi
  done
  crds=$(grep -E "for kind ($CRD_KINDS) " <<<"$out" | sed -E 's/.*for kind ([A-Za-z]+) .*/\1/' | sort | uniq -c | awk '{printf "%s%s x%s", sep, $2, $1; sep=", "}' || true)
  if [[ -n "$crds" ]]; then
    echo "  note $overlay: no Kubernetes schema for $crds: checked against their CRD models below"
  fi
done

echo "== Deployment conventions (scripts/check_deploy.py)"
python scripts/check_deploy.py "${overlay_args[@]}" || failed=1

if command -v promtool >/dev/null 2>&1; then
  echo "== promtool"
  if out=$(promtool check rules deploy/prometheus/rules/*.yml 2>&1); then ok "promtool check rules"; else fail "promtool check rules"; echo "$out"; fi
  if out=$(promtool check config --syntax-only deploy/prometheus/prometheus.yml 2>&1); then ok "promtool check config"; else fail "promtool check config"; echo "$out"; fi
  for test in deploy/prometheus/tests/*.test.yml; do
    [[ -e "$test" ]] || continue
    if out=$(promtool test rules "$test" 2>&1); then ok "promtool test rules $test"; else fail "promtool test rules $test"; echo "$out"; fi
  done
fi

elapsed=$((SECONDS - started))
if ((failed)); then
  echo "deploy-check: FAILED (${elapsed}s)"
  exit 1
fi
echo "deploy-check: all passed (${elapsed}s)"
