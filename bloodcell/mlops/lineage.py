"""Lineage of a model version: the runs linked to it with their config and code version, every
step (status, cached, duration, where it ran), its input and output artifacts (name, version,
fingerprint, uri, source) and the expectation results that guarded it."""

from __future__ import annotations

import json
from typing import Any

from bloodcell import MODEL_NAME
from bloodcell.mlops.registry import get_version


def _seconds(start, end) -> float | None:
    return round((end - start).total_seconds(), 1) if start and end else None


def _artifact(av: Any, load_reports: bool) -> dict[str, Any]:
    meta = av.run_metadata
    out = {
        "name": av.name,
        "version": str(av.version),
        "type": str(av.type),
        "fingerprint": meta.get("fingerprint") or meta.get("weights_hash") or av.content_hash,
        "uri": av.uri,
    }
    if meta.get("source"):
        out["source"] = meta["source"]
    if meta.get("referral"):
        out["referral"] = meta["referral"]
    if av.name.endswith("_expectations"):
        out["expectations"] = {
            "success": meta.get("success"),
            "count": meta.get("expectations"),
            "failed": meta.get("failed"),
        }
        if load_reports:
            try:
                report = av.load()
                out["expectations"]["results"] = [
                    {
                        "expectation": r.expectation,
                        "table": r.table,
                        "column": r.kwargs.get("column"),
                        "success": r.success,
                        "observed": r.observed,
                        "threshold": r.threshold,
                    }
                    for r in report.results
                ]
            except Exception as exc:  # e.g. run outside the project: keep the metadata summary
                out["expectations"]["load_error"] = f"{type(exc).__name__}: {exc}"
    return out


def lineage(
    version: str = "latest", name: str = MODEL_NAME, load_reports: bool = True
) -> dict[str, Any]:
    """Everything that made a model version: the run(s) linked to it with their config and code
    version, every step (status, cached, duration, where it ran), its input and output artifacts
    (name, version, fingerprint, uri, source) and the expectation results that guarded it."""
    from zenml.client import Client
    from zenml.utils.pagination_utils import depaginate

    mv = get_version(version, name)
    runs = []
    linked = depaginate(
        Client().list_pipeline_runs, linked_to_model_version_id=mv.id, sort_by="asc:created"
    )
    for run in linked:
        stack = run.stack
        steps = []
        for step_name, s in run.steps.items():
            operator = s.config.step_operator
            steps.append(
                {
                    "name": step_name,
                    "status": str(s.status),
                    "cached": str(s.status) == "cached",
                    "duration_s": _seconds(s.start_time, s.end_time),
                    "ran_on": f"step operator {operator}" if operator else "orchestrator",
                    "parameters": dict(s.config.parameters),
                    "inputs": [
                        _artifact(a, load_reports) for avs in s.inputs.values() for a in avs
                    ],
                    "outputs": [
                        _artifact(a, load_reports) for avs in s.outputs.values() for a in avs
                    ],
                }
            )
        code = run.code_reference
        runs.append(
            {
                "id": str(run.id),
                "name": run.name,
                "pipeline": run.pipeline.name if run.pipeline else None,
                "status": str(run.status),
                "started": str(run.start_time),
                "duration_s": _seconds(run.start_time, run.end_time),
                "stack": stack.name if stack else None,
                "code_version": run.run_metadata.get("code_version")
                or (f"{code.code_repository.name}@{code.commit}" if code else None),
                "config": {
                    "model": run.config.model.name if run.config.model else None,
                    "enable_cache": run.config.enable_cache,
                    "steps": {st["name"]: st["parameters"] for st in steps},
                },
                "steps": steps,
            }
        )
    return {
        "model": {
            "name": name,
            "version": mv.name,
            "number": mv.number,
            "stage": mv.stage,
            "metadata": {k: v for k, v in mv.run_metadata.items() if not isinstance(v, dict)},
        },
        "runs": runs,
    }


def rule_line(rule: Any) -> str:
    """One line on a model's referral rule (``bloodcell.model.referral``), or what stands
    instead."""
    if not isinstance(rule, dict):
        return str(rule)
    return (
        f"temperature {rule['temperature']:.3f}; accept at confidence >= "
        f"{rule['confidence_threshold']:.4f} "
        f"(target accuracy {rule['target_accuracy']}); review beyond distance "
        f"{rule['review_distance']:.2f}, "
        f"not a cell beyond {rule['far_distance']:.2f}; stain ranges {rule['stain_ranges']}"
    )


def format_lineage(info: dict[str, Any]) -> str:
    m = info["model"]
    lines = [
        f"model {m['name']} version {m['number']} ({m['version']}), stage {m['stage'] or 'none'}"
    ]
    for k, v in sorted(m["metadata"].items()):
        lines.append(f"  {k}: {v}")
    for run in info["runs"]:
        lines += [
            "",
            f"run {run['name']} ({run['id']})",
            f"  pipeline {run['pipeline']}, status {run['status']}, "
            f"started {run['started']}, {run['duration_s']} s, stack {run['stack']}",
            f"  code version: {run['code_version']}",
        ]
        for st in run["steps"]:
            lines.append(
                f"  step {st['name']}: {st['status']}{' (cached)' if st['cached'] else ''}, "
                f"{st['duration_s']} s, ran on {st['ran_on']}"
            )
            if st["parameters"]:
                lines.append(
                    f"    parameters: {json.dumps(st['parameters'], default=str, sort_keys=True)}"
                )
            for kind in ("inputs", "outputs"):
                for a in st[kind]:
                    if "expectations" in a:
                        continue
                    src = f", source {a['source']}" if a.get("source") else ""
                    lines.append(
                        f"    {kind[:-1]} {a['name']} v{a['version']}: fingerprint "
                        f"{a['fingerprint']}{src}, {a['uri']}"
                    )
                    if kind == "outputs" and a.get("referral"):
                        lines.append(f"      referral rule: {rule_line(a['referral'])}")
            for a in st["outputs"]:
                exp = a.get("expectations")
                if not exp:
                    continue
                lines.append(
                    f"    expectations {a['name']} v{a['version']}: "
                    f"{'passed' if exp['success'] else 'FAILED'} ({exp['count']} checked, "
                    f"{exp['failed']} failed)"
                )
                for r in exp.get("results", []):
                    on = f"{r['table']}.{r['column']}" if r["column"] else r["table"]
                    lines.append(
                        f"      {'ok  ' if r['success'] else 'FAIL'} {r['expectation']} on {on}: "
                        f"observed {r['observed']}, threshold {r['threshold']}"
                    )
    return "\n".join(lines) + "\n"
