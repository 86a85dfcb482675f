"""The official MCP conformance suite (``@modelcontextprotocol/conformance``, pinned in
ts-client/package-lock.json) against a whole stack, for both wire eras the SDK serves: the
2025-11-25 requirement set (initialize handshake) and the 2026-07-28 one (stateless, per-request
``_meta``).

The runner has no option for a header, so it talks to a local proxy that adds the bearer token.
Scenarios that cannot apply to a tools-only server are listed, with reasons, in
``conformance/expected-failures.yml``; the runner itself fails on any other failure and on an
entry that has started to pass.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from imagegen_testing.stack import RunningStack

pytestmark = pytest.mark.slow  # starts service processes: `-m "not slow"` skips it

BASELINE = Path(__file__).parent / "conformance" / "expected-failures.yml"
CONFORMANCE = Path("node_modules", "@modelcontextprotocol", "conformance", "dist", "index.js")

# Scenarios that test what imagegen does offer: each must have run and passed every check, also
# when the suite scores it as "pending" (which the exit status alone would not enforce).
MUST_PASS = {
    "2025-11-25": {"server-initialize", "ping", "tools-list", "dns-rebinding-protection"},
    "2026-07-28": {
        "tools-list",
        "server-sse-multiple-streams",
        "dns-rebinding-protection",
        "http-header-validation",
    },
}

# Checks of those scenarios that fail today because of a bug we know of, reported and waiting
# for a fix. Strict: once a check passes, the test fails until its entry is removed here.
KNOWN_BUGS: set[str] = set()


def checks_by_scenario(results: Path) -> dict[str, list[dict[str, object]]]:
    """The checks of each scenario in a results directory (``server-<scenario>-<timestamp>/``)."""
    found: dict[str, list[dict[str, object]]] = {}
    for checks in results.glob("server-*/checks.json"):
        scenario = re.sub(r"^server-|-\d{4}-\d\d-\d\dT.*$", "", checks.parent.name)
        found.setdefault(scenario, []).extend(json.loads(checks.read_text()))
    return found


@pytest.mark.parametrize("revision", ["2025-11-25", "2026-07-28"])
def test_the_conformance_suite_passes_every_applicable_scenario(
    outside_stack: RunningStack,
    node_tool: Callable[..., subprocess.CompletedProcess[str]],
    bearer_proxy: Callable[[str, str], str],
    tmp_path: Path,
    revision: str,
) -> None:
    proxy = bearer_proxy(outside_stack.gateway_url, outside_stack.create_account(credits=10).token)
    results = tmp_path / "results"
    completed = node_tool(
        CONFORMANCE, "server",
        "--url", f"{proxy}/api/mcp",
        "--requirements", revision,
        "--expected-failures", str(BASELINE),
        "--output-dir", str(results),
    )  # fmt: skip
    report = completed.stdout[completed.stdout.find("=== SUMMARY ===") :] + completed.stderr
    assert completed.returncode == 0, f"conformance {revision}:\n{report}\n{outside_stack.logs()}"

    checks = checks_by_scenario(results)
    for scenario in MUST_PASS[revision]:
        assert scenario in checks, f"{scenario} did not run:\n{report}"
        statuses = {str(check["id"]): check["status"] for check in checks[scenario]}
        assert "SUCCESS" in statuses.values(), (scenario, statuses)
        for check, status in statuses.items():
            expected = {"FAILURE"} if check in KNOWN_BUGS else {"SUCCESS", "INFO", "SKIPPED"}
            assert status in expected, f"{scenario}: {check} is {status}, expected {expected}"
