"""Metric names that the Grafana dashboard and the Prometheus alert rules use, and those the
architecture document lists.

    python scripts/metric_names.py            every metric base name the dashboard and the rules use
    python scripts/metric_names.py --series   the sample names as queried (``…_bucket`` of histograms)

Import it from a test to compare with what a running service exports::

    spec = importlib.util.spec_from_file_location("metric_names", ROOT / "scripts/metric_names.py")
    ...
    for name in metric_names.referenced_metric_names(ROOT): ...

Names follow docs/architecture.md: counters keep their ``_total``; a histogram ``x_seconds`` is queried
as ``x_seconds_bucket``/``_count``/``_sum``. In a scrape (text format) a counter is a ``x_total`` sample
and a histogram is ``x_seconds_bucket`` samples, so compare ``referenced_series_names`` with sample
names, and ``referenced_metric_names`` with the documented names. A labelled metric that has never been
observed has no samples yet.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS_DIR = Path("deploy/grafana/dashboards")
RULES_DIR = Path("deploy/prometheus/rules")
ARCHITECTURE_DOC = Path("docs/architecture.md")

#: Series every Prometheus has without our services exporting them.
PROMETHEUS_BUILTIN = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})
#: Labels Prometheus attaches to every scraped series (target labels), plus `le` of histogram buckets.
TARGET_LABELS = frozenset({"job", "instance", "pod", "namespace", "service", "container", "endpoint"})
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")

_KEYWORDS = frozenset(
    {
        "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
        "and", "or", "unless", "offset", "inf", "nan", "atan2",
        # aggregation operators, which may be followed by `by (…)` before their parenthesis
        "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
        "bottomk", "topk", "quantile", "limitk", "limit_ratio",
    }
)  # fmt: skip
_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_IDENTIFIER = re.compile(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w])(\s*\()?")
_SELECTOR = re.compile(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^{}]*)\}")
_MATCHER_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")


@dataclass(frozen=True)
class DocumentedMetric:
    """One row of the metrics table of docs/architecture.md."""

    name: str
    type: str
    labels: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class Query:
    """A PromQL expression and where it comes from (for messages)."""

    expr: str
    origin: str


def _strip_strings(expr: str) -> str:
    return _STRING.sub('""', expr)


def series_names(expr: str) -> set[str]:
    """Metric (sample) names a PromQL expression selects: ``rate(x_bucket[5m])`` gives ``x_bucket``.

    A small lexer, not a parser: it drops strings, label matchers, ranges, grouping label lists and
    dashboard variables, then keeps the identifiers that are neither keywords nor function calls.
    """
    text = _VARIABLE.sub(" ", _strip_strings(expr))
    text = _LABEL_LIST.sub(r"\1", text)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    names: set[str] = set()
    for match in _IDENTIFIER.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name in _KEYWORDS:
            continue
        names.add(name)
    return names


def selector_labels(expr: str) -> list[tuple[str, str]]:
    """(metric, label) for each label matcher written next to a metric name: ``x{code="OK"}``."""
    text = _VARIABLE.sub(" ", _strip_strings(expr))
    return [
        (match.group(1), label)
        for match in _SELECTOR.finditer(text)
        for label in _MATCHER_LABEL.findall(match.group(2))
    ]


def grouping_labels(expr: str) -> set[str]:
    """Labels named in ``by (…)``, ``without (…)``, ``on (…)``, ``ignoring (…)`` and ``group_*(…)``."""
    labels: set[str] = set()
    for match in _LABEL_LIST.finditer(_strip_strings(expr)):
        labels.update(part.strip() for part in match.group(2).split(",") if part.strip())
    return labels


def base_name(series: str, histograms: Iterable[str] = ()) -> str:
    """The documented name of a sample name: ``x_seconds_bucket`` → ``x_seconds`` when ``x_seconds`` is a
    histogram (any name ending in a histogram suffix when ``histograms`` is empty)."""
    known = set(histograms)
    for suffix in HISTOGRAM_SUFFIXES:
        stem = series.removesuffix(suffix)
        if stem != series and (not known or stem in known):
            return stem
    return series


def _panel_queries(panels: list[Any], origin: str) -> Iterator[Query]:
    for panel in panels:
        if not isinstance(panel, dict):
            continue
        title = panel.get("title", "?")
        for target in panel.get("targets", []) or []:
            if isinstance(target, dict) and isinstance(target.get("expr"), str):
                yield Query(target["expr"], f"{origin}: panel {title!r} {target.get('refId', '?')}")
        yield from _panel_queries(panel.get("panels", []) or [], origin)


def dashboard_queries(path: Path) -> list[Query]:
    """Every PromQL expression of a Grafana dashboard JSON: panel targets and query variables."""
    dashboard = json.loads(path.read_text())
    queries = list(_panel_queries(dashboard.get("panels", []), path.name))
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        if variable.get("type") == "query":
            text = query.get("query") if isinstance(query, dict) else query
            if isinstance(text, str):
                queries.append(Query(text, f"{path.name}: variable {variable.get('name')!r}"))
    return queries


def rules_queries(path: Path) -> list[Query]:
    """Every ``expr`` of a Prometheus rules file (groups → rules)."""
    document = yaml.safe_load(path.read_text()) or {}
    return [
        Query(str(rule["expr"]), f"{path.name}: {rule.get('alert') or rule.get('record')}")
        for group in document.get("groups", [])
        for rule in group.get("rules", [])
    ]


def all_queries(root: Path = ROOT) -> list[Query]:
    """The queries of every dashboard under deploy/grafana/dashboards and every rules file under
    deploy/prometheus/rules."""
    queries: list[Query] = []
    for path in sorted((root / DASHBOARDS_DIR).glob("*.json")):
        queries.extend(dashboard_queries(path))
    for path in sorted((root / RULES_DIR).glob("*.yml")) + sorted((root / RULES_DIR).glob("*.yaml")):
        if not path.name.endswith((".test.yml", ".test.yaml")):
            queries.extend(rules_queries(path))
    return queries


def referenced_series_names(root: Path = ROOT) -> set[str]:
    """Sample names the dashboards and rules query, as written (``…_bucket``, ``…_total``, ``up``)."""
    return {name for query in all_queries(root) for name in series_names(query.expr)}


def referenced_metric_names(root: Path = ROOT, *, include_builtin: bool = False) -> set[str]:
    """Documented base names of the metrics the dashboards and rules use (histogram suffixes removed;
    Prometheus' own ``up`` left out unless ``include_builtin``)."""
    names = {base_name(series) for series in referenced_series_names(root)}
    return names if include_builtin else names - PROMETHEUS_BUILTIN


def documented_metrics(path: Path = ROOT / ARCHITECTURE_DOC) -> dict[str, DocumentedMetric]:
    """The metrics table of docs/architecture.md: ``| `name` | type | `label` (`value`, …), … |``."""
    metrics: dict[str, DocumentedMetric] = {}
    row = re.compile(r"^\|\s*`([a-z_:][a-z0-9_:]*)`\s*\|\s*(counter|gauge|histogram|summary)\s*\|(.*)\|\s*$")
    for line in path.read_text().splitlines():
        match = row.match(line.strip())
        if not match:
            continue
        name, kind, labels_cell = match.groups()
        labels_cell = re.sub(r"\([^)]*\)", "", labels_cell)  # value lists and remarks, not labels
        labels = frozenset(re.findall(r"`([a-zA-Z_][a-zA-Z0-9_]*)`", labels_cell))
        metrics[name] = DocumentedMetric(name, kind, labels)
    return metrics


def check_queries(queries: list[Query], documented: dict[str, DocumentedMetric]) -> list[str]:
    """Problems: metric names that are not documented, histogram suffixes on non-histograms, labels a
    selector or a grouping names that none of the expression's metrics has."""
    problems: list[str] = []
    histograms = {m.name for m in documented.values() if m.type == "histogram"}
    for query in queries:
        known_labels = set(TARGET_LABELS)
        for series in sorted(series_names(query.expr)):
            name = base_name(series, histograms)
            if name in PROMETHEUS_BUILTIN:
                continue
            metric = documented.get(name)
            if metric is None:
                problems.append(f"{query.origin}: metric {series!r} is not in {ARCHITECTURE_DOC}")
                continue
            if series in histograms:
                problems.append(
                    f"{query.origin}: histogram {series!r} has no such series; query {series}_bucket, "
                    "_count or _sum"
                )
            known_labels |= metric.labels
            if name in histograms:
                known_labels.add("le")
        for metric_name, label in selector_labels(query.expr):
            metric = documented.get(base_name(metric_name, histograms))
            allowed = TARGET_LABELS | (metric.labels if metric else frozenset())
            if metric and label not in allowed | {"le"}:
                problems.append(f"{query.origin}: {metric_name} has no label {label!r}")
        for label in sorted(grouping_labels(query.expr) - known_labels):
            problems.append(f"{query.origin}: no metric of the expression has the label {label!r}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--series", action="store_true", help="sample names as queried")
    parser.add_argument("--root", type=Path, default=ROOT)
    args = parser.parse_args(argv)
    names = referenced_series_names(args.root) if args.series else referenced_metric_names(args.root)
    sys.stdout.write("".join(f"{name}\n" for name in sorted(names)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
