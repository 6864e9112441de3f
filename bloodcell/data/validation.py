"""Great Expectations 1.x suites, declared in YAML, run on pandas tables inside the steps.

A suite file (``configs/expectations.yaml``) maps each step to its tables and each table to a list
of expectations, written as ``{expectation_type: {kwargs}}`` with GX's snake-case names::

    ingest:
      samples:
        - expect_column_values_to_be_between: {column: label, min_value: 0, max_value: 7}

``{param: NAME}`` takes a threshold from the parameter NAME the step passes to ``validate`` (to
``guard`` in a step); ``{param: NAME, times: K}`` takes K times it. Blocks of expectations that
several suites share are written once under the top-level ``shared:`` key and pulled into a
table's list with ``- include: BLOCK``.

Every check reads as a rule (:attr:`CheckResult.rule`), e.g. ``metrics.plain_accuracy >= 0.3
(min_plain_accuracy)``. A failed expectation raises :class:`ExpectationFailed` naming the step,
the expectation, the table and column, the observed value, the threshold and the rule. Every run,
passed or failed, gives a :class:`ValidationReport`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

THRESHOLD_KEYS = (
    "min_value",
    "max_value",
    "value",
    "value_set",
    "mostly",
    "strict_min",
    "strict_max",
)


class ExpectationFailed(RuntimeError):
    """A data expectation failed; the message names the step, the expectation, its table and
    column, the observed value, the threshold and the rule."""

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
    # kwarg -> the step parameter its value came from ({param: NAME} in the suite)
    params: dict[str, str] = field(default_factory=dict)
    # the column's value when the table has one row (a metric, a summary), else None
    value: Any = None

    @property
    def threshold(self) -> dict[str, Any]:
        return {k: v for k, v in self.kwargs.items() if k in THRESHOLD_KEYS}

    def _bound(self, key: str) -> str:
        """``kwargs[key]``, followed by the parameter it came from: ``0.3 (min_plain_accuracy)``."""
        value = self.kwargs[key]
        return f"{value} ({self.params[key]})" if key in self.params else f"{value}"

    @property
    def rule(self) -> str:
        """The check in words: ``samples.std >= 2.0``, ``summary.removed_fraction 0.02 <= 0.05
        (max_fraction)`` (with the value where the table has one row), ``samples.id unique``."""
        k, column = self.kwargs, self.kwargs.get("column")
        on = f"{self.table}.{column}" if column else self.table
        if self.value is not None:
            on += f" {round(self.value, 6) if isinstance(self.value, float) else self.value}"
        if self.expectation == "expect_column_values_to_be_between":
            low, high = k.get("min_value"), k.get("max_value")
            ge = ">" if k.get("strict_min") else ">="
            le = "<" if k.get("strict_max") else "<="
            same = low == high and self.params.get("min_value") == self.params.get("max_value")
            if low is not None and same and ge == ">=" and le == "<=":
                text = f"{on} == {self._bound('min_value')}"
            elif low is not None and high is not None:
                text = f"{self._bound('min_value')} {'<' if ge == '>' else '<='} {on} {le} "
                text += self._bound("max_value")
            elif low is not None:
                text = f"{on} {ge} {self._bound('min_value')}"
            elif high is not None:
                text = f"{on} {le} {self._bound('max_value')}"
            else:
                text = f"{on} any value"
        elif self.expectation == "expect_column_values_to_be_in_set":
            text = f"{on} in {self._bound('value_set')}"
        elif self.expectation == "expect_column_values_to_not_be_null":
            text = f"{on} not null"
        elif self.expectation == "expect_column_values_to_be_unique":
            text = f"{on} unique"
        elif self.expectation == "expect_table_row_count_to_equal":
            text = f"{on} has {self._bound('value')} rows"
        else:
            rest = {key: v for key, v in k.items() if key != "column"}
            text = f"{on}: {self.expectation} {rest}"
        if k.get("mostly") is not None:
            text += f" for at least {k['mostly']:.0%} of rows"
        return text

    def describe(self) -> str:
        column = self.kwargs.get("column")
        on = f"{self.table}.{column}" if column else self.table
        return (
            f"{self.expectation} on {on}: observed {self.observed}, "
            f"threshold {self.threshold or self.kwargs} (rule: {self.rule})"
        )


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

    def summary(self) -> str:
        """One line for the suite, one for each check: ``passed  metrics.plain_accuracy 0.91 >= 0.3
        (min_plain_accuracy)``."""
        passed = len(self.results) - len(self.failures)
        lines = [f"step '{self.step}': {passed}/{len(self.results)} expectations passed"]
        lines += [f"  {'passed' if r.success else 'FAILED'}  {r.rule}" for r in self.results]
        return "\n".join(lines)

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
            f"<tr style='background:{'#e8f5e9' if r.success else '#ffebee'}'>"
            f"<td>{'passed' if r.success else 'FAILED'}</td>"
            f"<td>{_esc(r.rule)}</td>"
            f"<td>{r.table}</td><td>{r.expectation}</td><td>{r.kwargs.get('column', '')}</td>"
            f"<td>{_esc(r.observed)}</td><td>{_esc(r.threshold or r.kwargs)}</td></tr>"
            for r in self.results
        )
        verdict = (
            "all expectations passed"
            if self.success
            else f"{len(self.failures)} expectation(s) FAILED"
        )
        return (
            "<html><body style='font-family:sans-serif'>"
            f"<h3>Great Expectations: step '{self.step}' - {verdict}</h3>"
            "<table border='1' cellpadding='4' style='border-collapse:collapse;font-size:13px'>"
            "<tr><th>result</th><th>rule</th><th>table</th><th>expectation</th><th>column</th>"
            "<th>observed</th><th>threshold</th></tr>"
            f"{rows}</table></body></html>"
        )


def _esc(v: Any) -> str:
    return str(v).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def load_suites(path: str | Path) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Step -> table -> expectations, with every ``- include: BLOCK`` entry replaced by the
    expectations of ``shared: {BLOCK: [...]}`` (the ``shared`` key itself is not a step)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: expectation suite file not found")
    suites = yaml.safe_load(p.read_text()) or {}
    if not isinstance(suites, dict):
        raise ValueError(f"{p}: must map step names to tables of expectations")
    shared = suites.pop("shared", None) or {}
    for step, suite in suites.items():
        for table, entries in (suite or {}).items():
            suite[table] = _include(entries or [], shared, f"{p}: {step}.{table}")
    return suites


def _include(
    entries: list[dict[str, Any]], shared: dict[str, list], where: str
) -> list[dict[str, Any]]:
    out = []
    for entry in entries:
        if isinstance(entry, dict) and set(entry) == {"include"}:
            block = entry["include"]
            if block not in shared:
                raise ValueError(
                    f"{where} includes '{block}', which is not a block under shared: "
                    f"({sorted(shared)})"
                )
            out += [dict(e) for e in shared[block]]
        else:
            out.append(entry)
    return out


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
        count, total = result["unexpected_count"], result.get("element_count")
        return f"{count} unexpected of {total}, e.g. {sample}"
    return result


def _is_param(value: Any) -> bool:
    return isinstance(value, dict) and "param" in value and set(value) <= {"param", "times"}


def param_names(kwargs: dict[str, Any]) -> dict[str, str]:
    """kwarg -> where its value comes from (``max_fraction``, ``2 * max_fraction``), for every
    ``{param: NAME}`` or ``{param: NAME, times: K}`` value of ``kwargs``."""
    return {
        key: f"{value['times']} * {value['param']}" if "times" in value else value["param"]
        for key, value in kwargs.items()
        if _is_param(value)
    }


def resolve_params(kwargs: dict[str, Any], params: dict[str, Any], step: str) -> dict[str, Any]:
    """Replace every ``{param: NAME}`` value by ``params[NAME]``, every ``{param: NAME, times:
    K}`` by ``K * params[NAME]``."""
    out = dict(kwargs)
    for key, value in kwargs.items():
        if not _is_param(value):
            continue
        name = value["param"]
        if name not in params:
            raise ValueError(
                f"expectation for step '{step}' refers to parameter '{name}', "
                f"which the step does not have ({sorted(params)})"
            )
        out[key] = value["times"] * params[name] if "times" in value else params[name]
    return out


def _single_value(df: pd.DataFrame, column: str | None) -> Any:
    """The column's one value where ``df`` has one row (a metric, a summary), else None."""
    if column is None or len(df) != 1 or column not in df.columns:
        return None
    value = df[column].iloc[0]
    value = value.item() if hasattr(value, "item") else value
    return value if isinstance(value, (bool, int, float, str)) else None


def validate(
    step: str,
    tables: dict[str, pd.DataFrame],
    suite: dict[str, list[dict[str, Any]]],
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
            raise ValueError(
                f"suite for step '{step}' checks table '{table_name}', "
                f"which the step does not build ({sorted(tables)})"
            )
        specs = []
        for entry in entries:
            ((name, kwargs),) = entry.items()
            kwargs = dict(kwargs or {})
            specs.append((name, resolve_params(kwargs, params or {}, step), param_names(kwargs)))
        expectations = [_expectation(n, k) for n, k, _ in specs]
        gx_suite = context.suites.add(
            gx.ExpectationSuite(name=f"{step}.{table_name}", expectations=expectations)
        )
        batch_def = source.add_dataframe_asset(
            name=table_name
        ).add_batch_definition_whole_dataframe("all")
        batch = batch_def.get_batch(batch_parameters={"dataframe": tables[table_name]})
        result = batch.validate(gx_suite, result_format="SUMMARY")
        by_id = {r.expectation_config.id: r for r in result.results}
        for (name, kwargs, names), expectation in zip(specs, gx_suite.expectations):
            r = by_id[expectation.id]
            report.results.append(
                CheckResult(
                    table_name,
                    name,
                    kwargs,
                    bool(r.success),
                    _observed(dict(r.result)),
                    params=names,
                    value=_single_value(tables[table_name], kwargs.get("column")),
                )
            )
    return report
