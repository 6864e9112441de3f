"""Great Expectations 1.x suites, declared in YAML, run on pandas tables inside the steps.

A suite file (``configs/expectations.yaml``) maps each step to its tables and each table to a list
of expectations, written as ``{expectation_type: {kwargs}}`` with GX's snake-case names::

    ingest:
      samples:
        - expect_column_values_to_be_between: {column: label, min_value: 0, max_value: 7}

A failed expectation raises :class:`ExpectationFailed` naming the step, the expectation, the
observed value and the threshold. Every run, passed or failed, gives a :class:`ValidationReport`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

THRESHOLD_KEYS = ("min_value", "max_value", "value", "value_set", "mostly", "strict_min", "strict_max")


class ExpectationFailed(RuntimeError):
    """A data expectation failed; the message names the step, expectation, observed value, threshold."""

    def __init__(self, report: ValidationReport):
        self.report = report
        lines = [f"step '{report.step}': {len(report.failures)} expectation(s) failed"]
        lines += [f"  - {r.describe()}" for r in report.failures]
        super().__init__("\n".join(lines))


@dataclass
class CheckResult:
    table: str
    expectation: str
    kwargs: dict[str, Any]
    success: bool
    observed: Any

    @property
    def threshold(self) -> dict[str, Any]:
        return {k: v for k, v in self.kwargs.items() if k in THRESHOLD_KEYS}

    def describe(self) -> str:
        column = self.kwargs.get("column")
        on = f"{self.table}.{column}" if column else self.table
        return f"{self.expectation} on {on}: observed {self.observed}, threshold {self.threshold or self.kwargs}"


@dataclass
class ValidationReport:
    step: str
    results: list[CheckResult] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return all(r.success for r in self.results)

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if not r.success]

    def raise_for_failures(self) -> ValidationReport:
        """Raise :class:`ExpectationFailed` if any expectation failed; else return self."""
        if not self.success:
            raise ExpectationFailed(self)
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "results": [asdict(r) for r in self.results]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ValidationReport:
        return cls(step=d["step"], results=[CheckResult(**r) for r in d["results"]])

    def html(self) -> str:
        rows = "".join(
            f"<tr style='background:{'#e8f5e9' if r.success else '#ffebee'}'><td>{'passed' if r.success else 'FAILED'}</td>"
            f"<td>{r.table}</td><td>{r.expectation}</td><td>{r.kwargs.get('column', '')}</td>"
            f"<td>{_esc(r.observed)}</td><td>{_esc(r.threshold or r.kwargs)}</td></tr>"
            for r in self.results
        )
        verdict = "all expectations passed" if self.success else f"{len(self.failures)} expectation(s) FAILED"
        return (
            f"<html><body style='font-family:sans-serif'><h3>Great Expectations: step '{self.step}' - {verdict}</h3>"
            "<table border='1' cellpadding='4' style='border-collapse:collapse;font-size:13px'>"
            "<tr><th>result</th><th>table</th><th>expectation</th><th>column</th><th>observed</th><th>threshold</th></tr>"
            f"{rows}</table></body></html>"
        )


def _esc(v: Any) -> str:
    return str(v).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def load_suites(path: str | Path) -> dict[str, dict[str, list[dict[str, Any]]]]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: expectation suite file not found")
    suites = yaml.safe_load(p.read_text()) or {}
    if not isinstance(suites, dict):
        raise ValueError(f"{p}: must map step names to tables of expectations")
    return suites


def _expectation(name: str, kwargs: dict[str, Any]):
    import great_expectations as gx

    cls_name = "".join(part.capitalize() for part in name.split("_"))
    cls = getattr(gx.expectations, cls_name, None)
    if cls is None:
        raise ValueError(f"unknown Great Expectations expectation {name!r}")
    return cls(**kwargs)


def _observed(result: dict[str, Any]) -> Any:
    if "observed_value" in result:
        value = result["observed_value"]
        return round(value, 6) if isinstance(value, float) else value
    if "unexpected_count" in result:
        sample = result.get("partial_unexpected_list", [])[:5]
        return f"{result['unexpected_count']} unexpected of {result.get('element_count')}, e.g. {sample}"
    return result


def resolve_params(kwargs: dict[str, Any], params: dict[str, Any], step: str) -> dict[str, Any]:
    """Replace every ``{param: NAME}`` value by ``params[NAME]``."""
    out = {}
    for key, value in kwargs.items():
        if isinstance(value, dict) and set(value) == {"param"}:
            name = value["param"]
            if name not in params:
                raise ValueError(f"expectation for step '{step}' refers to parameter '{name}', "
                                 f"which the step does not have ({sorted(params)})")
            value = params[name]
        out[key] = value
    return out


def validate(
    step: str, tables: dict[str, pd.DataFrame], suite: dict[str, list[dict[str, Any]]],
    params: dict[str, Any] | None = None,
) -> ValidationReport:
    """Run ``suite`` (table name -> expectations) on ``tables`` with an ephemeral GX context."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas(name=f"{step}_tables")
    report = ValidationReport(step=step)
    for table_name, entries in suite.items():
        if table_name not in tables:
            raise ValueError(f"suite for step '{step}' checks table '{table_name}', which the step does not build ({sorted(tables)})")
        specs = []
        for entry in entries:
            ((name, kwargs),) = entry.items()
            specs.append((name, resolve_params(dict(kwargs or {}), params or {}, step)))
        expectations = [_expectation(n, k) for n, k in specs]
        gx_suite = context.suites.add(gx.ExpectationSuite(name=f"{step}.{table_name}", expectations=expectations))
        batch_def = source.add_dataframe_asset(name=table_name).add_batch_definition_whole_dataframe("all")
        batch = batch_def.get_batch(batch_parameters={"dataframe": tables[table_name]})
        result = batch.validate(gx_suite, result_format="SUMMARY")
        by_id = {r.expectation_config.id: r for r in result.results}
        for (name, kwargs), expectation in zip(specs, gx_suite.expectations):
            r = by_id[expectation.id]
            report.results.append(CheckResult(table_name, name, kwargs, bool(r.success), _observed(dict(r.result))))
    return report

