"""The checks of `make deploy-check` that no linter does: docker-compose.yml and .env.example, the
Dockerfile's conventions, every NATS configuration, the alert rules and the dashboard (metric names
included), the rendered Kubernetes overlays, and the custom resources against their CRD models.

    python scripts/check_deploy.py --overlay dev=rendered-dev.yaml --overlay prod=rendered-prod.yaml

scripts/deploy-check.sh renders the overlays (kubectl kustomize) and runs the linters first. Prints one
line per check; exits 1 when any check failed.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import deploy_assets
import metric_names
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
NATS_CONFIG_DIR = ROOT / "deploy/nats"
OPERATIONS_DOC = ROOT / "docs/operations.md"

SERVICES = ("billing", "generator", "gateway")
#: Secrets that must come from the (uncommitted) env file and be required there.
COMPOSE_SECRETS = (
    "IMAGEGEN_ADMIN_TOKEN",
    "POSTGRES_PASSWORD",
    "REPLICATE_API_TOKEN",
    "IMAGEGEN_NATS_GATEWAY_PASSWORD",
    "IMAGEGEN_NATS_GENERATOR_PASSWORD",
    "IMAGEGEN_NATS_BILLING_PASSWORD",
    "IMAGEGEN_BILLING_GATEWAY_SECRET",
    "IMAGEGEN_BILLING_WEBHOOKS_SECRET",
)
#: The NATS user of each service (imagegen_common.nats_auth.Role) and the variable of its password.
NATS_PASSWORDS = {s: f"IMAGEGEN_NATS_{s.upper()}_PASSWORD" for s in SERVICES}
#: Which service holds which of billing's caller secrets (billing checks them, the gateway sends them).
CALLER_SECRET_HOLDERS = {"billing", "gateway"}
#: The Secret that production creates outside of git (docs/operations.md lists its keys).
EXTERNAL_SECRET = "imagegen-secrets"
#: Environment variable holding each service's shutdown drain time, in seconds.
DRAIN_SETTINGS = {
    "billing": "IMAGEGEN_BILLING_SHUTDOWN_GRACE_SECONDS",
    "generator": "IMAGEGEN_GENERATOR_DRAIN_TIMEOUT_SECONDS",
    "gateway": "IMAGEGEN_GATEWAY_DRAIN_TIMEOUT_SECONDS",
}
#: Environment variable with each service's metrics address (host:port) and the Prometheus job.
METRICS_LISTEN = {
    "billing": "IMAGEGEN_BILLING_OPS_LISTEN",
    "generator": "IMAGEGEN_GENERATOR_OPS_LISTEN",
    "gateway": "IMAGEGEN_GATEWAY_LISTEN",
}
CRD_MODELS = {
    "ScaledObject": ("cloudcoil.models.keda.v1alpha1", "cloudcoil-models-keda"),
    "ServiceMonitor": ("cloudcoil.models.prometheus_operator.v1", "cloudcoil-models-prometheus-operator"),
    "PrometheusRule": ("cloudcoil.models.prometheus_operator.v1", "cloudcoil-models-prometheus-operator"),
}
INGRESS_MIN_TIMEOUT_SECONDS = 330
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job")

Doc = dict[str, Any]


@dataclass
class Report:
    """Collects the outcome of every check."""

    failures: list[str] = field(default_factory=list)

    def check(self, name: str, problems: list[str]) -> None:
        if problems:
            self.failures.extend(f"{name}: {p}" for p in problems)
            _say(f"  FAIL {name}")
            for problem in problems:
                _say(f"       - {problem}")
        else:
            _say(f"  ok   {name}")

    def note(self, text: str) -> None:
        _say(f"  note {text}")


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _tool(name: str) -> str | None:
    """A command from the project's environment (uv run puts it on PATH) or from the system."""
    candidate = Path(sysconfig.get_path("scripts")) / name
    return str(candidate) if candidate.exists() else shutil.which(name)


# --------------------------------------------------------------------------------------------------
# docker compose


_INTERPOLATION = re.compile(
    r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))"
)


def parse_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (comments and blank lines skipped), as docker compose reads an env file."""
    values: dict[str, str] = {}
    for raw_line in path.read_text().splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip().strip("'\"")
    return values


def interpolate(value: Any, env: dict[str, str], problems: list[str], where: str = "") -> Any:
    """Compose's variable substitution (``${X}``, ``${X:-d}``, ``${X-d}``, ``${X:?e}``, ``${X?e}``,
    ``${X:+a}``, ``$$``) applied to every string of a document."""
    if isinstance(value, dict):
        return {k: interpolate(v, env, problems, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, problems, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(1):
            return "$"
        name = match.group(2) or match.group(5)
        operator, argument = match.group(3), match.group(4) or ""
        present = name in env
        current = env.get(name, "")
        unset_or_empty = not present or current == ""
        if operator == ":-":
            return argument if unset_or_empty else current
        if operator == "-":
            return argument if not present else current
        if operator == ":?" and unset_or_empty:
            problems.append(f"{where}: required variable {name} is unset or empty in {ENV_EXAMPLE.name}")
        if operator == "?" and not present:
            problems.append(f"{where}: required variable {name} is not in {ENV_EXAMPLE.name}")
        if operator == ":+":
            return "" if unset_or_empty else argument
        return current

    return _INTERPOLATION.sub(substitute, value)


def referenced_variables(text: str) -> set[str]:
    return {m.group(2) or m.group(5) for m in _INTERPOLATION.finditer(text) if not m.group(1)}


def _environment(service: Doc) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.partition("=")[::2] for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _dockerfile_stages() -> set[str]:
    return {m.group(1) for m in re.finditer(r"(?im)^FROM\s+\S+\s+AS\s+(\S+)", DOCKERFILE.read_text())}


def _secret_problems(raw_text: str, raw: Doc) -> list[str]:
    problems: list[str] = []
    gitignore = (ROOT / ".gitignore").read_text().split()
    if ".env" not in gitignore:
        problems.append(".env is not in .gitignore")
    for secret in COMPOSE_SECRETS:
        if not re.search(r"\$\{" + secret + r":?\?", raw_text):
            problems.append(f"{secret} is not read as a required variable (${{{secret}:?…}})")
    for name, service in raw["services"].items():
        for key, value in _environment(service).items():
            if re.search(r"(TOKEN|PASSWORD|SECRET|ACCESS_KEY)", key) and "${" not in value:
                problems.append(f"{name}: {key} has a literal value; take it from the env file")
    return problems


def _depends_on_problems(name: str, service: Doc, services: Doc) -> list[str]:
    depends = service.get("depends_on") or {}
    if isinstance(depends, list):
        return [f"{name}: depends_on without conditions"]
    problems: list[str] = []
    for target, spec in depends.items():
        condition = (spec or {}).get("condition")
        if target not in services:
            problems.append(f"{name}: depends on unknown service {target}")
        elif condition == "service_healthy" and not services[target].get("healthcheck"):
            problems.append(f"{name}: waits for {target} to be healthy, which has no healthcheck")
        elif condition == "service_completed_successfully" and services[target].get("restart") != "no":
            problems.append(f"{name}: waits for {target} to complete, but {target} restarts")
        elif condition not in ("service_healthy", "service_completed_successfully", "service_started"):
            problems.append(f"{name}: depends_on {target} has no condition")
    return problems


def _compose_service_problems(name: str, service: Doc, services: Doc, stages: set[str]) -> list[str]:
    problems: list[str] = []
    if "container_name" in service:
        problems.append(f"{name}: container_name prevents scaling and parallel stacks")
    healthcheck = service.get("healthcheck") or {}
    one_shot = service.get("restart") == "no"
    if not one_shot and (not healthcheck.get("test") or healthcheck.get("disable")):
        problems.append(f"{name}: no healthcheck")
    problems += _depends_on_problems(name, service, services)
    target = (service.get("build") or {}).get("target")
    if target and target not in stages:
        problems.append(f"{name}: build target {target!r} is not a stage of the Dockerfile")
    for volume in service.get("volumes") or []:
        source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
        if source.startswith((".", "/")) and not (ROOT / source).exists():
            problems.append(f"{name}: bind-mounted {source} does not exist")
    return problems


def _compose_stack_problems(services: Doc) -> list[str]:
    stages = _dockerfile_stages()
    problems: list[str] = []
    for name, service in services.items():
        problems += _compose_service_problems(name, service, services, stages)
    generator = services.get("generator", {})
    problems += [
        f"generator: has {key}, so `docker compose up --scale generator=N` cannot work"
        for key in ("ports", "container_name", "hostname")
        if key in generator
    ]
    billing = services.get("billing", {})
    migrates_first = (billing.get("depends_on") or {}).get("migrate", {}).get("condition")
    auto = _environment(billing).get("IMAGEGEN_DATABASE_AUTO_MIGRATE", "true").lower() != "false"
    if migrates_first != "service_completed_successfully" and not auto:
        problems.append("billing: neither waits for a migrate service nor migrates on start")
    if (services.get("migrate") or {}).get("command") not in (None, ["billing", "migrate"]):
        problems.append("migrate: command is not `billing migrate`")
    if not (services.get("gateway") or {}).get("ports"):
        problems.append("gateway: no published port")
    return problems


def _compose_prometheus_problems(services: Doc) -> list[str]:
    problems: list[str] = []
    prometheus_config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus_config.get("scrape_configs", [])}
    for service, variable in METRICS_LISTEN.items():
        listen = _environment(services.get(service, {})).get(variable, "")
        port = int(listen.rpartition(":")[2]) if listen else None
        job = jobs.get(service)
        if job is None:
            problems.append(f"no scrape job {service!r}")
            continue
        sd = [c for c in job.get("dns_sd_configs", []) if service in c.get("names", [])]
        if not sd:
            problems.append(f"job {service}: not discovered by DNS (dns_sd_configs names: [{service}])")
        elif port is not None and sd[0].get("port") != port:
            problems.append(f"job {service}: scrapes port {sd[0].get('port')}, the service listens on {port}")
    return problems


def _compose_schema_problems(compose: Doc) -> list[str]:
    """The official compose-spec schema (vendored by check-jsonschema), on the interpolated file."""
    checker = _tool("check-jsonschema")
    if checker is None:
        return ["check-jsonschema not found (make setup)"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "docker-compose.json"
        path.write_text(json.dumps(compose))
        result = subprocess.run(
            [checker, "--builtin-schema", "vendor.compose-spec", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
    return [] if result.returncode == 0 else [result.stdout.strip() or result.stderr.strip()]


def check_compose(report: Report) -> None:
    raw_text = COMPOSE_FILE.read_text()
    raw: Doc = yaml.safe_load(raw_text)
    env = parse_env_file(ENV_EXAMPLE)
    problems: list[str] = []
    compose: Doc = interpolate(raw, env, problems)
    problems += [
        f"{name} is used by {COMPOSE_FILE.name} but not listed in {ENV_EXAMPLE.name}"
        for name in sorted(referenced_variables(raw_text) - set(env))
    ]
    report.check(f"compose: every variable is set by {ENV_EXAMPLE.name}", problems)
    report.check(
        "compose: secrets come from the env file (.env, not committed)", _secret_problems(raw_text, raw)
    )
    report.check(
        "compose: healthchecks, depends_on conditions, scalable generator, mounts",
        _compose_stack_problems(compose["services"]),
    )
    report.check(
        "compose: Prometheus finds every replica of every service",
        _compose_prometheus_problems(compose["services"]),
    )
    report.check(
        "compose: interpolated file valid against the compose-spec schema", _compose_schema_problems(compose)
    )


# --------------------------------------------------------------------------------------------------
# Dockerfile


def check_dockerfile(report: Report) -> None:
    text = DOCKERFILE.read_text()
    problems: list[str] = []
    makefile_uv = re.search(r"(?m)^UV_VERSION\s*:=\s*(\S+)", (ROOT / "Makefile").read_text())
    docker_uv = re.search(r"ghcr\.io/astral-sh/uv:(\S+)", text)
    if not (makefile_uv and docker_uv and makefile_uv.group(1) == docker_uv.group(1)):
        problems.append(
            f"uv image {docker_uv.group(1) if docker_uv else '?'} differs from the Makefile's "
            f"UV_VERSION {makefile_uv.group(1) if makefile_uv else '?'}"
        )
    stages = _dockerfile_stages()
    problems += [f"no stage {name!r}" for name in SERVICES if name not in stages]
    syncs = [m.start() for m in re.finditer(r"uv sync ", text)]
    copy_code = text.find("COPY . ")
    if len(syncs) < 2 or "--no-install-workspace" not in text[syncs[0] : syncs[0] + 200]:
        problems.append("dependencies are not installed with `uv sync --no-install-workspace` first")
    elif copy_code != -1 and not syncs[0] < copy_code < syncs[1]:
        problems.append("the code is copied before the dependency layer")
    if any("--frozen" not in text[s : s + 120] for s in syncs):
        problems.append("every `uv sync` must be --frozen")
    for setting in ("UV_COMPILE_BYTECODE=1", "PYTHONDONTWRITEBYTECODE=1"):
        if setting not in text:
            problems.append(f"{setting} is not set")
    users = re.findall(r"(?m)^USER\s+(\S+)", text)
    if not users or any(u.split(":")[0] in ("root", "0") for u in users):
        problems.append("the images do not run as a non-root USER")
    for instruction in re.findall(r"(?m)^(?:ENTRYPOINT|CMD)\s+(.*)$", text):
        if not instruction.startswith("["):
            problems.append(f"not exec form (SIGTERM would not reach Python): {instruction}")
    for name in SERVICES:
        stage = re.search(rf"(?ims)^FROM\s+\S+\s+AS\s+{name}\b(.*?)(?=^FROM\s|\Z)", text)
        if stage and "HEALTHCHECK" not in stage.group(1):
            problems.append(f"stage {name}: no HEALTHCHECK")
    report.check("Dockerfile: uv version, dependency layer, bytecode, non-root, exec form", problems)


# --------------------------------------------------------------------------------------------------
# NATS


def _conf_without_comments(text: str) -> str:
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def nats_config_problems(text: str) -> list[str]:
    """What a NATS configuration of ours must have: JetStream fsyncing every write, the monitor port."""
    body = _conf_without_comments(text)
    problems: list[str] = []
    jetstream = re.search(r"(?s)\bjetstream\s*[:=]?\s*\{(.*?)\}", body)
    if not jetstream:
        problems.append("no jetstream block")
    elif not re.search(r"(?m)^\s*sync_interval\s*[:=]?\s*\"?always\"?\s*$", jetstream.group(1)):
        problems.append(
            "jetstream does not set `sync_interval: always` (lazy fsync loses acknowledged messages)"
        )
    if not re.search(r"(?m)^\s*http_port\s*[:=]\s*8222\s*$", body):
        problems.append("monitoring port (http_port: 8222) is not enabled")
    return problems


def nats_server_test(text: str) -> str | None:
    """``nats-server -t``: the server's own parse of a configuration; None when valid or no server."""
    binary = _tool("nats-server")
    if binary is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "nats.conf"
        path.write_text(text)
        result = subprocess.run(
            [binary, "-t", "-c", str(path)],
            capture_output=True,
            text=True,
            check=False,
            # the passwords the authorization block references, as compose and Kubernetes give them
            env={
                **os.environ,
                "SERVER_NAME": "nats-0",
                **{
                    variable: f"s{service}0123456789abcdefghij"
                    for service, variable in NATS_PASSWORDS.items()
                },
            },
        )
    return None if result.returncode == 0 else (result.stderr or result.stdout).strip()


def nats_paths(text: str) -> tuple[str, str]:
    """The directories a NATS configuration writes to: its pid file's and JetStream's store."""
    body = _conf_without_comments(text)
    pid = re.search(r"(?m)^\s*pid_file\s*[:=]\s*\"?([^\"\s]+)", body)
    store = re.search(r"(?m)^\s*store_dir\s*[:=]\s*\"?([^\"\s]+)", body)
    return (str(Path(pid.group(1)).parent) if pid else "", store.group(1) if store else "")


def _under(path: str, mounts: set[str]) -> bool:
    return not path or any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts)


def nats_mount_problems(rendered: dict[str, list[Doc]]) -> list[str]:
    """nats-server exits when it cannot write its pid file; JetStream must write to the volume."""
    problems: list[str] = []
    compose = yaml.safe_load(COMPOSE_FILE.read_text())["services"].get("nats", {})
    conf = next(
        (v.split(":")[0] for v in compose.get("volumes", []) if v.endswith("/etc/nats/nats.conf:ro")), ""
    )
    if conf:
        mounts = {str(t).split(":")[0] for t in compose.get("tmpfs", [])}
        mounts |= {v.split(":")[1] for v in compose.get("volumes", []) if not v.startswith(".")}
        for path in nats_paths((ROOT / conf).read_text()):
            if not _under(path, mounts):
                problems.append(f"compose nats: {path} is neither a volume nor a tmpfs")
    for overlay, docs in rendered.items():
        nats = _index(docs).get(("StatefulSet", "nats"))
        if not nats:
            continue
        container = _pod_spec(nats)["containers"][0]
        mounts = {m["mountPath"] for m in container.get("volumeMounts", []) if not m.get("readOnly")}
        conf_text = "\n".join(
            str(v)
            for d in docs
            if d["kind"] == "ConfigMap" and _base_name(d["metadata"]["name"]) == "nats-config"
            for v in (d.get("data") or {}).values()
        )
        for path in nats_paths(conf_text):
            if not _under(path, mounts):
                problems.append(f"{overlay}: StatefulSet nats does not mount {path} writable")
    return problems


def credential_problems(where: str, service: str, env: dict[str, str]) -> list[str]:
    """A service's environment (values, or the Secret key they come from) holds its own NATS user and
    password and no other's; only billing and the gateway hold billing's caller secrets; the NATS
    server holds every password its authorization block references."""
    problems: list[str] = []
    if service == "nats":
        missing = [v for v in NATS_PASSWORDS.values() if v not in env]
        return [f"{where}: the NATS server lacks {', '.join(missing)}"] if missing else []
    if env.get("IMAGEGEN_NATS_USER") != service:
        problems.append(f"{where}: IMAGEGEN_NATS_USER is not {service}")
    if NATS_PASSWORDS[service] not in env.get("IMAGEGEN_NATS_PASSWORD", ""):
        problems.append(f"{where}: IMAGEGEN_NATS_PASSWORD does not come from {NATS_PASSWORDS[service]}")
    others = [v for s, v in NATS_PASSWORDS.items() if s != service and any(v in x for x in env.values())]
    problems += [f"{where}: holds another service's NATS password ({v})" for v in others]
    callers = [k for k in env if k.startswith("IMAGEGEN_BILLING_") and "_SECRET" in k]
    if service in CALLER_SECRET_HOLDERS:
        for caller in ("GATEWAY", "WEBHOOKS"):
            if f"IMAGEGEN_BILLING_{caller}_SECRET" not in env:
                problems.append(f"{where}: lacks IMAGEGEN_BILLING_{caller}_SECRET")
    elif callers:
        problems.append(
            f"{where}: holds billing's caller secrets ({', '.join(callers)}), which it never uses"
        )
    return problems


def _k8s_env(container: Doc) -> dict[str, str]:
    """A container's environment: literal values, or the Secret key a value comes from."""
    env: dict[str, str] = {}
    for item in container.get("env", []):
        ref = (item.get("valueFrom") or {}).get("secretKeyRef")
        env[item["name"]] = str(ref["key"]) if ref else str(item.get("value", ""))
    return env


def check_credentials(report: Report, rendered: dict[str, list[Doc]]) -> None:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    problems: list[str] = []
    for service in (*SERVICES, "nats"):
        problems += credential_problems(f"compose {service}", service, _environment(compose[service]))
    for overlay, docs in rendered.items():
        index = _index(docs)
        for service in (*SERVICES, "nats"):
            kind = "StatefulSet" if service == "nats" else "Deployment"
            doc = index.get((kind, service))
            if doc is None:
                problems.append(f"{overlay}: no {kind} {service}")
                continue
            env = _k8s_env(_pod_spec(doc)["containers"][0])
            problems += credential_problems(f"{overlay} {service}", service, env)
    report.check("least privilege: each service holds its own NATS password and no other's", problems)


def check_nats(report: Report, rendered: dict[str, list[Doc]]) -> None:
    problems: list[str] = []
    sources: list[tuple[str, str]] = [
        (str(p.relative_to(ROOT)), p.read_text()) for p in sorted(NATS_CONFIG_DIR.rglob("*.conf"))
    ]
    for overlay, docs in rendered.items():
        for doc in docs:
            if doc["kind"] == "ConfigMap":
                for key, value in (doc.get("data") or {}).items():
                    if key.endswith(".conf") or "jetstream" in str(value):
                        sources.append((f"{overlay}: ConfigMap {doc['metadata']['name']}/{key}", str(value)))
    expected_block = deploy_assets.authorization_block().strip() + "\n"
    auth_problems: list[str] = []
    for origin, text in sources:
        section = deploy_assets.authorization_section(text)
        if section is None:
            auth_problems.append(f"{origin}: no authorization block (run `python scripts/deploy_assets.py`)")
        elif section != expected_block:
            auth_problems.append(
                f"{origin}: the authorization block differs from imagegen_common.nats_auth.ROLES "
                "(run `python scripts/deploy_assets.py`)"
            )
    report.check(
        f"NATS: {len(sources)} configurations carry the users of nats_auth.ROLES (authorization_block())",
        auth_problems,
    )
    for origin, text in sources:
        problems += [f"{origin}: {p}" for p in nats_config_problems(text)]
        error = nats_server_test(text)
        if error:
            problems.append(f"{origin}: nats-server -t: {error}")
    if not _tool("nats-server"):
        report.note("nats-server not found: configurations not parsed by the server itself")
    report.check(
        f"NATS: {len(sources)} configurations set sync_interval always and parse (nats-server -t)", problems
    )
    report.check("NATS: pid file and JetStream store are on writable mounts", nats_mount_problems(rendered))


# --------------------------------------------------------------------------------------------------
# Alert rules and dashboard


def _heading_anchors(markdown: str) -> set[str]:
    anchors = set()
    for heading in re.findall(r"(?m)^#{1,6}\s+(.*?)\s*#*\s*$", markdown):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def _rule_problems(rule: Doc, anchors: set[str]) -> list[str]:
    name = rule.get("alert")
    problems: list[str] = []
    if rule.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
        problems.append(f"{name}: severity is not critical, warning or info")
    if not re.fullmatch(r"(\d+[smhdwy])+", str(rule.get("for", "0m"))):
        problems.append(f"{name}: `for` is not a duration")
    annotations = rule.get("annotations", {})
    problems += [
        f"{name}: no {a} annotation" for a in ("summary", "description", "runbook") if a not in annotations
    ]
    runbook = str(annotations.get("runbook", ""))
    anchor = runbook.partition("#")[2]
    if runbook and not runbook.startswith("docs/operations.md#"):
        problems.append(f"{name}: runbook {runbook!r} is not a section of docs/operations.md")
    elif anchor and anchor not in anchors:
        problems.append(f"{name}: docs/operations.md has no section #{anchor}")
    return problems


def _rules_problems() -> tuple[int, list[str]]:
    rules = yaml.safe_load((ROOT / deploy_assets.RULES).read_text())
    anchors = _heading_anchors(OPERATIONS_DOC.read_text()) if OPERATIONS_DOC.exists() else set()
    problems: list[str] = []
    names: Counter[str] = Counter()
    for group in rules.get("groups", []):
        if not group.get("name"):
            problems.append("a group has no name")
        for rule in group.get("rules", []):
            name = rule.get("alert") or rule.get("record")
            names[str(name)] += 1
            if not name or not isinstance(rule.get("expr"), str):
                problems.append(f"{group.get('name')}: a rule without alert/record name or expr")
            elif "alert" in rule:
                problems += _rule_problems(rule, anchors)
    problems += [f"{name}: defined {count} times" for name, count in names.items() if count > 1]
    return sum(names.values()), problems


def _provisioning_problems() -> list[str]:
    problems: list[str] = []
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/imagegen.yml").read_text())
    paths = {p["options"]["path"] for p in provider.get("providers", [])}
    grafana = yaml.safe_load(COMPOSE_FILE.read_text())["services"].get("grafana", {})
    mounts = {
        v.split(":")[1] for v in grafana.get("volumes", []) if v.startswith("./deploy/grafana/dashboards")
    }
    if not paths & mounts:
        problems.append(
            f"the provider reads {sorted(paths)}; compose mounts the dashboards at {sorted(mounts)}"
        )
    datasources = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    if not any(d.get("type") == "prometheus" for d in datasources.get("datasources", [])):
        problems.append("no Prometheus datasource is provisioned")
    return problems


def check_monitoring(report: Report) -> None:
    count, problems = _rules_problems()
    report.check(f"alert rules: {count} rules well-formed, each with a runbook section", problems)
    stale = deploy_assets.stale()
    report.check("alert rules: the Kubernetes PrometheusRule matches them", [stale] if stale else [])

    problems = []
    dashboards = sorted((ROOT / metric_names.DASHBOARDS_DIR).glob("*.json"))
    for path in dashboards:
        try:
            dashboard = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            problems.append(f"{path.name}: not JSON: {exc}")
            continue
        problems += [f"{path.name}: {p}" for p in dashboard_problems(dashboard)]
    report.check(f"dashboards: {len(dashboards)} JSON file(s) well-formed", problems)

    documented = metric_names.documented_metrics()
    queries = metric_names.all_queries()
    problems = metric_names.check_queries(queries, documented)
    if not documented:
        problems.append(f"no metrics table found in {metric_names.ARCHITECTURE_DOC}")
    used = metric_names.referenced_metric_names()
    doc = metric_names.ARCHITECTURE_DOC
    report.check(f"metric names: {len(queries)} queries use {len(used)} metrics, all in {doc}", problems)
    unused = sorted(set(documented) - used)
    if unused:
        report.note(f"documented but not on the dashboard or in a rule: {', '.join(unused)}")
    report.check(
        "grafana provisioning: datasource and dashboard folder match compose", _provisioning_problems()
    )


def _panels(panels: list[Doc]) -> Iterator[Doc]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []) or [])


def dashboard_problems(dashboard: Doc) -> list[str]:
    """A dashboard that works on both stacks: a uid, the `datasource` variable used by every panel and
    target, unique panel ids and refIds, a grid position for every panel."""
    problems: list[str] = []
    if not dashboard.get("uid") or not dashboard.get("title"):
        problems.append("no uid or title")
    variables = dashboard.get("templating", {}).get("list", [])
    if not any(v.get("type") == "datasource" and v.get("name") == "datasource" for v in variables):
        problems.append("no `datasource` variable (the Prometheus datasource must not be named by uid)")
    ids: Counter[int] = Counter()
    for panel in _panels(dashboard.get("panels", [])):
        title = panel.get("title", "?")
        ids[panel.get("id", -1)] += 1
        grid = panel.get("gridPos", {})
        if not all(isinstance(grid.get(k), int) for k in ("h", "w", "x", "y")):
            problems.append(f"panel {title!r}: no gridPos")
        if panel.get("type") == "row":
            continue
        targets = panel.get("targets") or []
        if not targets:
            problems.append(f"panel {title!r}: no query")
        for item in [panel, *targets]:
            if (item.get("datasource") or {}).get("uid") != "${datasource}":
                problems.append(f"panel {title!r}: datasource is not ${{datasource}}")
                break
        ref_ids = [t.get("refId") for t in targets]
        if len(set(ref_ids)) != len(ref_ids) or not all(t.get("expr") for t in targets):
            problems.append(f"panel {title!r}: duplicate refIds or a target without expr")
    problems += [f"panel id {i} used {n} times" for i, n in ids.items() if n > 1]
    return problems


# --------------------------------------------------------------------------------------------------
# Rendered Kubernetes overlays


def _index(docs: list[Doc]) -> dict[tuple[str, str], Doc]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def _base_name(name: str) -> str:
    """A generated ConfigMap's or Secret's name without kustomize's hash suffix."""
    return re.sub(r"-[a-z0-9]{10}$", "", name)


def _pod_spec(doc: Doc) -> Doc:
    return dict(doc["spec"]["template"]["spec"])


def _env(container: Doc) -> dict[str, str]:
    return {e["name"]: str(e.get("value", "")) for e in container.get("env", []) if "value" in e}


def _config(docs: list[Doc], name: str = "imagegen-config") -> dict[str, str]:
    for doc in docs:
        if doc["kind"] == "ConfigMap" and _base_name(doc["metadata"]["name"]) == name:
            return dict(doc.get("data") or {})
    return {}


def workload_problems(doc: Doc, docs: list[Doc]) -> list[str]:
    """Security context, resources, service account and /tmp of one Deployment, StatefulSet or Job."""
    where = f"{doc['kind']} {doc['metadata']['name']}"
    spec = _pod_spec(doc)
    problems: list[str] = []
    security = spec.get("securityContext", {})
    if security.get("runAsNonRoot") is not True:
        problems.append(f"{where}: runAsNonRoot is not true")
    if (security.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problems.append(f"{where}: seccompProfile is not RuntimeDefault")
    account = spec.get("serviceAccountName")
    if not account or ("ServiceAccount", account) not in _index(docs):
        problems.append(f"{where}: service account {account!r} is not deployed")
    if spec.get("automountServiceAccountToken") is not False:
        problems.append(f"{where}: mounts a service account token it does not need")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for container in spec.get("containers", []) + spec.get("initContainers", []):
        problems += _container_problems(f"{where}/{container['name']}", container, volumes)
    return problems


def _container_problems(where: str, container: Doc, volumes: dict[str, Doc]) -> list[str]:
    problems: list[str] = []
    sc = container.get("securityContext", {})
    if sc.get("allowPrivilegeEscalation") is not False:
        problems.append(f"{where}: allowPrivilegeEscalation is not false")
    if sc.get("readOnlyRootFilesystem") is not True:
        problems.append(f"{where}: readOnlyRootFilesystem is not true")
    if "ALL" not in (sc.get("capabilities") or {}).get("drop", []):
        problems.append(f"{where}: capabilities are not all dropped")
    resources = container.get("resources", {})
    problems += [
        f"{where}: no {resource} {kind}"
        for kind in ("requests", "limits")
        for resource in ("cpu", "memory")
        if resource not in resources.get(kind, {})
    ]
    if "imagegen" in container.get("image", ""):
        tmp = [m for m in container.get("volumeMounts", []) if m.get("mountPath") == "/tmp"]
        if not tmp or "emptyDir" not in volumes.get(tmp[0]["name"], {}):
            problems.append(f"{where}: /tmp is not a writable emptyDir")
    return problems


def _probe_uses(probe: Doc | None, kind: str) -> bool:
    return bool(probe) and kind in (probe or {})


def service_problems(name: str, deployment: Doc) -> list[str]:
    """Probes and graceful shutdown of one of our three services."""
    spec = _pod_spec(deployment)
    container = spec["containers"][0]
    env = _env(container)
    problems: list[str] = []
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if probe not in container:
            problems.append(f"{name}: no {probe}")
    if name == "billing":
        if not (
            _probe_uses(container.get("readinessProbe"), "grpc")
            and _probe_uses(container.get("startupProbe"), "grpc")
        ):
            problems.append("billing: readiness and startup probes are not native grpc probes")
        if env.get("IMAGEGEN_DATABASE_AUTO_MIGRATE", "true").lower() != "false":
            problems.append(
                "billing: IMAGEGEN_DATABASE_AUTO_MIGRATE is not false (the migration Job migrates)"
            )
    else:
        readiness = (container.get("readinessProbe") or {}).get("httpGet", {})
        if readiness.get("path") != "/readyz":
            problems.append(f"{name}: readiness probe is not httpGet /readyz")
    drain = env.get(DRAIN_SETTINGS[name])
    pre_stop = ((container.get("lifecycle") or {}).get("preStop") or {}).get("sleep", {}).get("seconds", 0)
    grace = int(spec.get("terminationGracePeriodSeconds", 30))
    if drain is None:
        problems.append(f"{name}: {DRAIN_SETTINGS[name]} is not set explicitly")
    elif grace <= float(drain) + int(pre_stop):
        problems.append(
            f"{name}: terminationGracePeriodSeconds {grace} <= drain {drain} s + preStop {pre_stop} s"
        )
    listen = env.get(METRICS_LISTEN[name], "")
    ports = {p.get("containerPort") for p in container.get("ports", [])}
    if not listen.startswith("0.0.0.0:") or int(listen.rpartition(":")[2]) not in ports:
        problems.append(f"{name}: {METRICS_LISTEN[name]}={listen!r} does not listen on a declared port")
    return problems


def reference_problems(docs: list[Doc], external: set[str]) -> list[str]:
    """ConfigMaps and Secrets the workloads use that are neither deployed nor expected to exist."""
    present = {(d["kind"], d["metadata"]["name"]) for d in docs}
    problems = []
    for doc in docs:
        if doc["kind"] not in WORKLOAD_KINDS:
            continue
        text = json.dumps(_pod_spec(doc))
        refs = [("ConfigMap", n) for n in re.findall(r'"configMapRef": \{"name": "([^"]+)"', text)]
        refs += [("ConfigMap", n) for n in re.findall(r'"configMap": \{"name": "([^"]+)"', text)]
        refs += [("Secret", n) for n in re.findall(r'"secret(?:Key)?Ref": \{"name": "([^"]+)"', text)]
        for kind, name in refs:
            if (kind, name) not in present and name not in external:
                problems.append(f"{doc['kind']} {doc['metadata']['name']}: {kind} {name} does not exist")
    return problems


def network_problems(docs: list[Doc]) -> list[str]:
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    problems: list[str] = []
    both = {"Ingress", "Egress"}
    deny = [
        p
        for p in policies
        if p["spec"].get("podSelector") == {}
        and set(p["spec"].get("policyTypes", [])) == both
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    if not deny:
        problems.append("no default-deny policy (empty podSelector, no ingress and egress rules)")
    for policy in policies:
        app = (policy["spec"].get("podSelector", {}).get("matchLabels") or {}).get("app")
        for rule in policy["spec"].get("ingress", []):
            peers = rule.get("from", [])
            external = [p for p in peers if "ipBlock" in p or p == {}] or not peers
            namespaces = {
                (p.get("namespaceSelector", {}).get("matchLabels") or {}).get("kubernetes.io/metadata.name")
                for p in peers
                if "namespaceSelector" in p
            }
            if external and app not in ("gateway",):
                problems.append(f"{policy['metadata']['name']}: {app} is open to any source")
            if "ingress-nginx" in namespaces and app != "gateway":
                problems.append(
                    f"{policy['metadata']['name']}: {app} is reachable from the ingress controller"
                )
            if app == "billing":
                ports = {p.get("port") for p in rule.get("ports", [])}
                pods: set[str] = {
                    str((p.get("podSelector", {}).get("matchLabels") or {}).get("app"))
                    for p in peers
                    if "podSelector" in p and "namespaceSelector" not in p
                }
                if namespaces - {"monitoring"} or (namespaces and ports != {9101}):
                    problems.append(
                        "billing: reachable from another namespace beyond Prometheus on its metrics port"
                    )
                if pods - {"gateway", "generator"}:
                    problems.append(f"billing: reachable from {sorted(pods - {'gateway', 'generator'})}")
    return problems


def ingress_problems(docs: list[Doc]) -> list[str]:
    ingresses = [d for d in docs if d["kind"] == "Ingress"]
    if len(ingresses) != 1:
        return [f"expected one Ingress (the gateway's), found {len(ingresses)}"]
    ingress = ingresses[0]
    annotations = ingress["metadata"].get("annotations", {})
    problems = []
    for key in ("proxy-read-timeout", "proxy-send-timeout"):
        value = annotations.get(f"nginx.ingress.kubernetes.io/{key}", "60")
        if not value.isdigit() or int(value) < INGRESS_MIN_TIMEOUT_SECONDS:
            problems.append(
                f"{key} is {value}, shorter than a synchronous generation ({INGRESS_MIN_TIMEOUT_SECONDS} s)"
            )
    if annotations.get("nginx.ingress.kubernetes.io/proxy-buffering") != "off":
        problems.append("proxy-buffering is not off (streamed MCP answers would be held back)")
    for rule in ingress["spec"].get("rules", []):
        for path in rule.get("http", {}).get("paths", []):
            service = path["backend"]["service"]["name"]
            if service != "gateway":
                problems.append(f"routes {path['path']} to {service}, not the gateway")
            if path["path"] in ("/", "/metrics"):
                problems.append(f"routes {path['path']}: /metrics would be public")
    return problems


def _expected_problems(docs: list[Doc], prod: bool) -> list[str]:
    index = _index(docs)
    expected = [
        ("StatefulSet", "nats"), ("Job", "billing-migrate"), ("HorizontalPodAutoscaler", "gateway"),
        ("Ingress", "gateway"), ("ServiceAccount", "nats"), ("PodDisruptionBudget", "nats"),
    ]  # fmt: skip
    for service in SERVICES:
        expected += [("Deployment", service), ("Service", service), ("ServiceAccount", service)]
        expected += [("PodDisruptionBudget", service)]
    if prod:
        expected += [("ScaledObject", "generator"), ("PrometheusRule", "imagegen")]
        expected += [("ServiceMonitor", s) for s in SERVICES]
    problems = [f"missing {kind} {name}" for kind, name in expected if (kind, name) not in index]
    if sum(1 for d in docs if d["kind"] == "NetworkPolicy") < 2:
        problems.append("no NetworkPolicies")
    namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
    if len(namespaces) != 1 or None in namespaces:
        problems.append(f"objects are not all in one namespace: {namespaces}")
    return problems


def _service_conventions_problems(docs: list[Doc]) -> list[str]:
    index = _index(docs)
    problems: list[str] = []
    for service in SERVICES:
        deployment = index.get(("Deployment", service))
        if deployment:
            problems += service_problems(service, deployment)
    job = index.get(("Job", "billing-migrate"))
    if job and _pod_spec(job)["containers"][0].get("args") != ["billing", "migrate"]:
        problems.append("billing-migrate: does not run `imagegen billing migrate`")
    problems += [
        f"Service {doc['metadata']['name']}: port {port.get('port')} has no name"
        for doc in docs
        if doc["kind"] == "Service"
        for port in doc["spec"].get("ports", [])
        if not port.get("name")
    ]
    return problems


def _environment_problems(docs: list[Doc], prod: bool) -> list[str]:
    index = _index(docs)
    config = _config(docs)
    nats_replicas = int(index.get(("StatefulSet", "nats"), {}).get("spec", {}).get("replicas", 1))
    stream_replicas = int(config.get("IMAGEGEN_NATS_STREAM_REPLICAS", "1"))
    hpa = index.get(("HorizontalPodAutoscaler", "gateway"), {}).get("spec", {})
    billing_replicas = int(index.get(("Deployment", "billing"), {}).get("spec", {}).get("replicas", 1))
    problems: list[str] = []
    if stream_replicas > nats_replicas:
        problems.append(f"streams want {stream_replicas} replicas, NATS has {nats_replicas} servers")
    if prod:
        return problems + _prod_problems(docs)
    if nats_replicas != 1 or billing_replicas != 1:
        problems.append("dev runs more than one NATS server or billing replica")
    if hpa.get("minReplicas") != 1 or ("ScaledObject", "generator") in index:
        problems.append("dev: the gateway HPA does not start at 1 replica, or KEDA is required")
    if ("Secret", EXTERNAL_SECRET) not in {(d["kind"], _base_name(d["metadata"]["name"])) for d in docs}:
        problems.append(f"dev: no {EXTERNAL_SECRET} Secret")
    return problems


def check_overlay(report: Report, overlay: str, docs: list[Doc]) -> None:
    """Everything an overlay must render; production (`prod`) more than the others."""
    prod = overlay == "prod"
    counts = Counter(d["kind"] for d in docs)
    rendered = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    report.check(f"{overlay}: renders {rendered}", _expected_problems(docs, prod))
    problems = [p for doc in docs if doc["kind"] in WORKLOAD_KINDS for p in workload_problems(doc, docs)]
    report.check(
        f"{overlay}: pods non-root, read-only, no capabilities, seccomp, requests and limits", problems
    )
    report.check(
        f"{overlay}: probes (grpc for billing), drain within the grace period, named ports",
        _service_conventions_problems(docs),
    )
    problems = reference_problems(docs, {EXTERNAL_SECRET} if prod else set())
    problems += network_problems(docs) + ingress_problems(docs)
    report.check(f"{overlay}: references resolve, default-deny NetworkPolicies, Ingress timeouts", problems)
    report.check(
        f"{overlay}: replicas, scaling and settings of the environment", _environment_problems(docs, prod)
    )


def _prod_problems(docs: list[Doc]) -> list[str]:
    index = _index(docs)
    config = _config(docs)
    nats_replicas = int(index.get(("StatefulSet", "nats"), {}).get("spec", {}).get("replicas", 1))
    stream_replicas = int(config.get("IMAGEGEN_NATS_STREAM_REPLICAS", "1"))
    problems: list[str] = []
    if nats_replicas != 3 or stream_replicas != 3:
        problems.append(
            f"NATS runs {nats_replicas} servers, streams R{stream_replicas}; production wants 3 and R3"
        )
    nats_config = index.get(("ConfigMap", _generated_name(docs, "nats-config")), {}).get("data", {})
    routes = re.findall(r"nats://(nats-\d+)\.nats-headless:6222", "\n".join(map(str, nats_config.values())))
    if sorted(routes) != [f"nats-{i}" for i in range(nats_replicas)]:
        problems.append(f"NATS routes {routes} do not list the {nats_replicas} servers")
    if int(index.get(("HorizontalPodAutoscaler", "gateway"), {}).get("spec", {}).get("minReplicas", 1)) < 2:
        problems.append("gateway HPA minReplicas < 2")
    if int(index.get(("Deployment", "billing"), {}).get("spec", {}).get("replicas", 1)) < 2:
        problems.append("billing runs fewer than 2 replicas")
    if config.get("IMAGEGEN_STORAGE_BACKEND") != "s3" or not config.get("IMAGEGEN_S3_BUCKET"):
        problems.append("images are not in S3-compatible storage (IMAGEGEN_STORAGE_BACKEND=s3 and a bucket)")
    if any(d["kind"] == "Secret" for d in docs):
        problems.append("production renders a Secret: secrets are created outside of git")
    return problems + _pinned_image_problems(docs) + _scaled_object_problems(docs) + _monitor_problems(docs)


def _pinned_image_problems(docs: list[Doc]) -> list[str]:
    problems: list[str] = []
    for doc in docs:
        if doc["kind"] not in WORKLOAD_KINDS:
            continue
        for container in _pod_spec(doc)["containers"]:
            image = str(container["image"])
            last = image.rpartition("/")[2]
            tag = last.rpartition(":")[2] if ":" in last else ""
            if "@sha256:" not in image and tag in ("", "latest"):
                problems.append(f"{doc['metadata']['name']}: image {image} is not pinned")
    return problems


def _monitor_problems(docs: list[Doc]) -> list[str]:
    index = _index(docs)
    problems: list[str] = []
    for service in SERVICES:
        ports = {p.get("name") for p in index.get(("Service", service), {}).get("spec", {}).get("ports", [])}
        for endpoint in index.get(("ServiceMonitor", service), {}).get("spec", {}).get("endpoints", []):
            if endpoint.get("port") not in ports:
                problems.append(
                    f"ServiceMonitor {service}: {endpoint.get('port')!r} is not a port of the Service"
                )
    return problems


def _generated_name(docs: list[Doc], name: str) -> str:
    for doc in docs:
        if _base_name(doc["metadata"]["name"]) == name:
            return str(doc["metadata"]["name"])
    return name


def _scaled_object_problems(docs: list[Doc]) -> list[str]:
    """The KEDA trigger must watch the stream and consumer the services use (imagegen_common)."""
    index = _index(docs)
    problems: list[str] = []
    scaled = index.get(("ScaledObject", "generator"), {}).get("spec", {})
    if (
        scaled.get("scaleTargetRef", {}).get("name") != "generator"
        or int(scaled.get("minReplicaCount", 0)) < 2
    ):
        problems.append("ScaledObject does not scale the generator Deployment from 2 replicas")
    if "replicas" in index.get(("Deployment", "generator"), {}).get("spec", {}):
        problems.append("the generator Deployment sets replicas, which fights KEDA on every apply")
    try:
        nats_names = importlib.import_module("imagegen_common.nats_names")
        stream, consumer = str(nats_names.JOBS_STREAM), str(nats_names.GENERATOR_CONSUMER)
    except ImportError:
        stream, consumer = "IMAGEGEN_JOBS", "generators"
    namespace = next(iter({d["metadata"].get("namespace") for d in docs if d["kind"] == "Service"}), "")
    for trigger in scaled.get("triggers", []):
        meta = trigger.get("metadata", {})
        if trigger.get("type") != "nats-jetstream":
            problems.append(f"unexpected trigger {trigger.get('type')}")
            continue
        want = {"stream": stream, "consumer": consumer, "account": "$G"}
        problems += [
            f"trigger {k} is {meta.get(k)!r}, the services use {v!r}"
            for k, v in want.items()
            if meta.get(k) != v
        ]
        endpoint = str(meta.get("natsServerMonitoringEndpoint", ""))
        if not re.fullmatch(rf"nats\.{re.escape(str(namespace))}(\.svc(\.cluster\.local)?)?:8222", endpoint):
            problems.append(
                f"natsServerMonitoringEndpoint {endpoint!r} is not the nats Service of namespace {namespace}"
            )
        if not str(meta.get("lagThreshold", "")).isdigit():
            problems.append("trigger has no numeric lagThreshold")
    if not scaled.get("triggers"):
        problems.append("ScaledObject has no trigger")
    return problems


# --------------------------------------------------------------------------------------------------
# Custom resources against their CRDs' schemas


def _dropped(original: Any, dumped: Any, path: str = "") -> list[str]:
    """Fields of ``original`` that the model did not keep (unknown to the CRD) or changed."""
    if isinstance(original, dict):
        if not isinstance(dumped, dict):
            return [path or "."]
        return [
            p
            for key, value in original.items()
            for p in (
                [f"{path}.{key}"] if key not in dumped else _dropped(value, dumped[key], f"{path}.{key}")
            )
        ]
    if isinstance(original, list):
        if not isinstance(dumped, list) or len(original) != len(dumped):
            return [path]
        return [
            p
            for i, (a, b) in enumerate(zip(original, dumped, strict=True))
            for p in _dropped(a, b, f"{path}[{i}]")
        ]
    return (
        []
        if original == dumped or str(original) == str(dumped)
        else [f"{path}: {original!r} became {dumped!r}"]
    )


def check_custom_resources(report: Report, rendered: dict[str, list[Doc]]) -> None:
    resources = [(overlay, d) for overlay, docs in rendered.items() for d in docs if d["kind"] in CRD_MODELS]
    kinds = Counter(d["kind"] for _, d in resources)
    summary = ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items()))
    models: dict[str, Callable[[Doc], Any]] = {}
    versions: set[str] = set()
    try:
        for kind, (module, distribution) in CRD_MODELS.items():
            models[kind] = getattr(importlib.import_module(module), kind).model_validate
            versions.add(f"{distribution} {importlib.metadata.version(distribution)}")
    except ImportError as exc:
        report.note(f"SKIPPED schema check of the custom resources ({summary}): {exc}")
        return
    problems: list[str] = []
    for overlay, doc in resources:
        where = f"{overlay}: {doc['kind']} {doc['metadata']['name']}"
        try:
            model = models[doc["kind"]](doc)
        except ValueError as exc:  # pydantic.ValidationError
            problems.append(f"{where}: {exc}")
            continue
        dumped = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
        problems += [f"{where}: {path} is not in the CRD schema" for path in _dropped(doc, dumped)]
    report.check(
        f"custom resources valid against the CRD schemas ({', '.join(sorted(versions))}): {summary}", problems
    )


# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Deployment checks that no linter does.")
    parser.add_argument(
        "--overlay",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="a rendered overlay (kubectl kustomize)",
    )
    args = parser.parse_args(argv)
    rendered: dict[str, list[Doc]] = {}
    for item in args.overlay:
        name, _, path = item.partition("=")
        rendered[name] = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]

    report = Report()
    check_compose(report)
    check_dockerfile(report)
    check_nats(report, rendered)
    check_credentials(report, rendered)
    check_monitoring(report)
    for name, docs in rendered.items():
        check_overlay(report, name, docs)
    check_custom_resources(report, rendered)
    if report.failures:
        _say(f"{len(report.failures)} problem(s)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
