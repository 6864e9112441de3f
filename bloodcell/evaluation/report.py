"""Evaluation of a shipped model: the plain test split, the same split with white Gaussian noise,
a corruption table, and other labs' images (external sets). Labels are matched to the model's
classes by name (``bloodcell.data.classes.label_map``). On each set, how far its answers can be
trusted (``bloodcell.evaluation.reliability``): calibration error before and after calibration, the
risk-coverage curve, the referral rule's coverage and accuracy among the accepted cells; and how
many generated non-cell images (``bloodcell.evaluation.noncells``) it accepts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from bloodcell.data.classes import label_map
from bloodcell.data.dataset import Dataset
from bloodcell.data.sharded_images import ShardedImages
from bloodcell.model.predict import model_classes, predict_classes


def add_white_noise(
    images: np.ndarray, sigma: float, seed: int | np.random.Generator = 0
) -> np.ndarray:
    """uint8 images plus N(0, sigma^2) per pixel and channel (0..255 scale), rounded and clipped.
    ``seed`` may be a generator, to go on drawing from it chunk after chunk."""
    rng = np.random.default_rng(seed)
    noisy = images.astype(np.float32) + rng.normal(0.0, sigma, images.shape).astype(np.float32)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


@dataclass
class SetMetrics:
    accuracy: float
    macro_f1: float
    per_class: dict[str, dict[str, float]]
    confusion: list[list[int]]
    n: int
    balanced_accuracy: float = 0.0  # mean recall over the classes present (support > 0)

    @property
    def present(self) -> list[str]:
        """The classes this set has samples of."""
        return [c for c, m in self.per_class.items() if m["support"] > 0]

    @property
    def recall_present(self) -> dict[str, float]:
        """Recall of each class this set has samples of (what its balanced accuracy averages)."""
        return {c: self.per_class[c]["recall"] for c in self.present}


@dataclass
class EvaluationReport:
    class_names: list[str]
    sets: dict[str, SetMetrics] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    # one row per corruption and severity (0 = clean): corruption, severity, setting, accuracy, n
    corruptions: list[dict[str, Any]] = field(default_factory=list)
    # other labs' images, by set name (ingest_external)
    external: dict[str, SetMetrics] = field(default_factory=dict)
    # by set name (plain, noisy, external_<name>): calibration, risk-coverage, the referral rule
    trust: dict[str, dict[str, Any]] = field(default_factory=dict)
    # by kind of generated non-cell image: n, accepted, not_a_cell
    non_cells: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvaluationReport:
        return cls(
            class_names=list(d["class_names"]),
            sets={k: SetMetrics(**v) for k, v in d["sets"].items()},
            params=dict(d.get("params", {})),
            corruptions=list(d.get("corruptions", [])),
            external={k: SetMetrics(**v) for k, v in d.get("external", {}).items()},
            trust=dict(d.get("trust", {})),
            non_cells=dict(d.get("non_cells", {})),
        )

    def summary(self) -> dict[str, float]:
        out = {}
        for name, m in self.sets.items():
            out[f"{name}_accuracy"] = m.accuracy
            out[f"{name}_macro_f1"] = m.macro_f1
        for name, m in self.external.items():
            out[f"external_{name}_accuracy"] = m.accuracy
            out[f"external_{name}_balanced_accuracy"] = m.balanced_accuracy
        for name, t in self.trust.items():
            for key in (
                "ece_before",
                "ece_after",
                "coverage",
                "accuracy_accepted",
                "not_a_cell",
                "aurc",
            ):
                if key in t and np.isfinite(
                    t[key]
                ):  # none accepted: no accuracy among them (NaN is not JSON)
                    out[f"{name}_{key}"] = t[key]
        if self.non_cells:
            n = sum(v["n"] for v in self.non_cells.values())
            out["non_cells_accepted"] = sum(
                v["accepted"] * v["n"] for v in self.non_cells.values()
            ) / max(n, 1)
        return out

    def log_lines(self) -> list[str]:
        """One line per figure, for the step's log."""
        lines = [
            f"{name} test accuracy {m.accuracy:.4f}, macro-F1 {m.macro_f1:.4f} (n={m.n})"
            for name, m in self.sets.items()
        ]
        lines += [
            f"external set {name}: accuracy {m.accuracy:.4f}, "
            f"balanced accuracy {m.balanced_accuracy:.4f} (n={m.n})"
            for name, m in self.external.items()
        ]
        lines += [
            f"{name}: ECE {t['ece_before']:.4f} -> {t['ece_after']:.4f} calibrated; "
            f"{100 * t['coverage']:.1f}% accepted at {t['accuracy_accepted']:.4f} accuracy, "
            f"{100 * t['review']:.1f}% review, {100 * t['not_a_cell']:.1f}% not a cell"
            for name, t in self.trust.items()
        ]
        if self.non_cells:
            accepted = 100 * self.summary()["non_cells_accepted"]
            lines.append(f"generated non-cell images accepted: {accepted:.1f}%")
        lines += [
            f"{r['corruption']} severity {r['severity']} ({r['setting']:g}): "
            f"accuracy {r['accuracy']:.4f}"
            for r in self.corruptions
            if r["severity"]
        ]
        return lines

    def markdown(self) -> str:
        lines = ["| set | n | accuracy | macro-F1 |", "|---|---|---|---|"]
        for name, m in self.sets.items():
            lines.append(f"| {name} | {m.n} | {m.accuracy:.4f} | {m.macro_f1:.4f} |")
        for name, m in self.sets.items():
            lines += [
                "",
                f"### {name}: per class",
                "",
                "| class | precision | recall | F1 | support |",
                "|---|---|---|---|---|",
            ]
            for c in self.class_names:
                p = m.per_class[c]
                lines.append(
                    f"| {c} | {p['precision']:.4f} | {p['recall']:.4f} | {p['f1']:.4f} | "
                    f"{int(p['support'])} |"
                )
        if self.corruptions:
            names = list(dict.fromkeys(r["corruption"] for r in self.corruptions))
            severities = sorted({r["severity"] for r in self.corruptions})
            lines += [
                "",
                f"### corruptions (accuracy on {self.corruptions[0]['n']} test images; severity 0 "
                "= clean)",
                "",
                "| corruption | " + " | ".join(f"severity {s}" for s in severities) + " |",
                "|---|" + "---|" * len(severities),
            ]
            for name in names:
                row = {r["severity"]: r for r in self.corruptions if r["corruption"] == name}
                cells = [
                    ""
                    if s not in row
                    else f"{row[s]['accuracy']:.4f}"
                    + ("" if row[s]["setting"] is None else f" ({row[s]['setting']:g})")
                    for s in severities
                ]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
        if self.external:
            lines += [
                "",
                "### other labs' images (external sets; balanced accuracy over the classes "
                "present)",
                "",
                "| set | n | accuracy | balanced accuracy | recall per class present |",
                "|---|---|---|---|---|",
            ]
            for name, m in self.external.items():
                recall = ", ".join(
                    f"{c} {m.per_class[c]['recall']:.2f} (n={int(m.per_class[c]['support'])})"
                    for c in m.present
                )
                lines.append(
                    f"| {name} | {m.n} | {m.accuracy:.4f} | {m.balanced_accuracy:.4f} | {recall} |"
                )
        if self.trust:
            lines += [
                "",
                "### can the answers be trusted? (ECE: expected calibration error; the referral "
                "rule's shares)",
                "",
                "| set | ECE before / after | accepted | accuracy among accepted | review | not a "
                "cell | "
                "coverage at 99% / 99.5% | AURC |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for name, t in self.trust.items():
                lines.append(
                    f"| {name} | {t['ece_before']:.4f} / {t['ece_after']:.4f} | "
                    f"{t['coverage']:.3f} | "
                    f"{t['accuracy_accepted']:.4f} | {t['review']:.3f} | {t['not_a_cell']:.3f} | "
                    f"{t['coverage_at_99']:.3f} / {t['coverage_at_99_5']:.3f} | {t['aurc']:.4f} |"
                )
            for name, t in self.trust.items():
                if "balanced_accuracy_ci" in t:
                    low, high = t["balanced_accuracy_ci"]
                    lines.append(
                        f"\n{name}: balanced accuracy 95% bootstrap interval {low:.3f} to "
                        f"{high:.3f}"
                    )
        if self.non_cells:
            lines += [
                "",
                "### generated non-cell images",
                "",
                "| kind | n | accepted | not a cell |",
                "|---|---|---|---|",
            ]
            for kind, v in self.non_cells.items():
                lines.append(f"| {kind} | {v['n']} | {v['accepted']:.3f} | {v['not_a_cell']:.3f} |")
        return "\n".join(lines) + "\n"


def set_metrics(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> SetMetrics:
    """Metrics of predictions ``y_pred`` against ``y_true`` (both indices into ``class_names``)."""
    labels = list(range(len(class_names)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return SetMetrics(
        balanced_accuracy=float(r[s > 0].mean()) if (s > 0).any() else 0.0,
        accuracy=float(accuracy_score(y_true, y_pred)),
        macro_f1=float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        per_class={
            c: {
                "precision": float(p[i]),
                "recall": float(r[i]),
                "f1": float(f[i]),
                "support": float(s[i]),
            }
            for i, c in enumerate(class_names)
        },
        confusion=confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        n=int(len(y_true)),
    )


def corruption_table(
    model: Any,
    images: np.ndarray | ShardedImages,
    labels: np.ndarray,
    corruptions: list[str] | None = None,
    chunk: int = 1024,
) -> list[dict[str, Any]]:
    """Accuracy under each corruption at each severity; severity 0 is the images uncorrupted.
    ``chunk`` images are read and corrupted at a time, so memory does not grow with the sample."""
    from bloodcell.evaluation.corruptions import SEVERITIES, corrupt

    n = len(images)
    settings = [
        (name, severity, setting)
        for name in corruptions or list(SEVERITIES)
        for severity, setting in enumerate(SEVERITIES[name], start=1)
    ]
    clean, correct = 0, np.zeros(len(settings), dtype=np.int64)
    for a in range(0, n, chunk):
        part, y = np.asarray(images[a : a + chunk]), labels[a : a + chunk]
        clean += int((predict_classes(model, part) == y).sum())
        for i, (name, severity, _) in enumerate(settings):
            correct[i] += int((predict_classes(model, corrupt(part, name, severity)) == y).sum())
    rows, clean_accuracy = [], clean / n if n else float("nan")
    for i, (name, severity, setting) in enumerate(settings):
        if severity == 1:
            rows.append(
                {
                    "corruption": name,
                    "severity": 0,
                    "setting": None,
                    "accuracy": clean_accuracy,
                    "n": n,
                }
            )
        rows.append(
            {
                "corruption": name,
                "severity": severity,
                "setting": float(setting),
                "accuracy": float(correct[i] / n) if n else float("nan"),
                "n": n,
            }
        )
    return rows


def corruption_mean(rows: list[dict[str, Any]]) -> float:
    """The mean accuracy over a corruption table's corrupted settings (severity > 0); NaN if
    none."""
    corrupted = [r["accuracy"] for r in rows if r["severity"]]
    return float(np.mean(corrupted)) if corrupted else float("nan")


def in_model_classes(ds: Dataset, classes: list[str], where: str) -> np.ndarray:
    """``ds``'s labels as indices into the model's ``classes``; a clear error naming any class of
    ``ds`` (among those it has samples of) that the model does not know."""
    present = sorted(set(ds.labels.tolist()))
    mapping = np.full(len(ds.class_names), -1, dtype=np.int64)
    mapping[present] = label_map([ds.class_names[i] for i in present], classes, where)
    return mapping[ds.labels]


def dataset_metrics(
    model: Any, ds: Dataset, where: str, classes: list[str] | None = None
) -> SetMetrics:
    """Metrics of ``model`` on the labelled ``ds`` (its labels matched to the model's ``classes``
    by name; ``where`` names ``ds`` in errors)."""

    classes = classes or model_classes(model)
    return set_metrics(
        in_model_classes(ds, classes, where), predict_classes(model, ds.images), classes
    )


def external_sets(external: Dataset) -> dict[str, Dataset]:
    """The sets of an ``ingest_external`` dataset, by name."""
    return {
        name: external.subset(np.arange(r["start"], r["stop"]))
        for name, r in external.info.get("sets", {}).items()
    }


def trust_metrics(scores: Any, y: np.ndarray) -> dict[str, Any]:
    """Calibration (before and after), risk-coverage and the referral rule's shares of one set's
    :class:`bloodcell.model.referral.Scores`; ``y``: its labels."""
    from bloodcell.evaluation.reliability import referral_summary, reliability, risk_coverage

    correct = scores.predicted == y
    before = reliability(scores.uncalibrated.max(axis=1), scores.uncalibrated.argmax(axis=1) == y)
    after = reliability(scores.confidence, correct)
    curve = risk_coverage(scores.confidence, correct)
    return {
        **referral_summary(scores.status, correct),
        "ece_before": before["ece"],
        "ece_after": after["ece"],
        "reliability_before": before,
        "reliability_after": after,
        **curve,
    }


def evaluate_model(
    model: Any,
    test: Dataset,
    noise_sigma: float = 25.0,
    seed: int = 0,
    corruption_samples: int | None = 0,
    external: Dataset | None = None,
    non_cells: int = 0,
) -> EvaluationReport:
    """Metrics of ``model`` (in inference mode) on ``test``, on ``test`` + white noise, (unless
    ``corruption_samples`` is None) the corruption table on that many test images (0: all), and on
    each set of ``external`` (other labs' images); on each, how far its answers can be trusted
    (``trust_metrics``); and the referral rule on ``non_cells`` generated images of each kind."""
    from bloodcell.evaluation.reliability import bootstrap_balanced_accuracy
    from bloodcell.model.referral import Scorer, rule_layer, score

    classes = model_classes(model)
    scorer = Scorer(model) if rule_layer(model) is not None else None
    y = in_model_classes(test, classes, "test split")
    report = EvaluationReport(
        class_names=classes, params={"noise_sigma": noise_sigma, "noise_seed": seed}
    )
    plain = score(model, test.images, scorer)
    report.sets["plain"] = set_metrics(y, plain.predicted, classes)
    report.trust["plain"] = trust_metrics(plain, y)
    if noise_sigma > 0:  # 512 images at a time, from one generator: the same noise as all at once
        rng = np.random.default_rng(seed)
        parts = [
            score(model, add_white_noise(test.images[a : a + 512], noise_sigma, rng), scorer)
            for a in range(0, len(test), 512)
        ]
        noisy = concat_scores(parts)
        report.sets["noisy"] = set_metrics(y, noisy.predicted, classes)
        report.trust["noisy"] = trust_metrics(noisy, y)
    if corruption_samples is not None:
        picked = test.sample(corruption_samples, seed)
        report.corruptions = corruption_table(
            model, picked.images, in_model_classes(picked, classes, "test split")
        )
    for name, part in external_sets(external).items() if external is not None else ():
        yx = in_model_classes(part, classes, f"external set {name!r}")
        scores = score(model, part.images, scorer)
        report.external[name] = set_metrics(yx, scores.predicted, classes)
        report.trust[f"external_{name}"] = {
            **trust_metrics(scores, yx),
            "balanced_accuracy_ci": bootstrap_balanced_accuracy(yx, scores.predicted),
        }
    if non_cells:
        from bloodcell.evaluation.noncells import non_cell_images

        size = int(test.images.shape[1])
        for kind, images in non_cell_images(
            size, non_cells, seed, np.asarray(test.images[:64])
        ).items():
            status = score(model, images, scorer).status
            report.non_cells[kind] = {
                "n": len(status),
                "accepted": status.count("accept") / len(status),
                "not_a_cell": status.count("not_a_cell") / len(status),
            }
    return report


def concat_scores(parts: list[Any]) -> Any:
    """One :class:`bloodcell.model.referral.Scores` of several batches'."""
    from bloodcell.model.referral import Scores

    return Scores(
        *(
            np.concatenate([getattr(p, f) for p in parts])
            for f in ("probabilities", "uncalibrated", "distance")
        ),
        *([x for p in parts for x in getattr(p, f)] for f in ("status", "reason", "check")),
    )
