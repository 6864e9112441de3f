"""The promotion rule (the registry side is tested end to end in test_pipeline_e2e.py)."""

from bloodcell.evaluation.promotion import decide


def test_first_version_is_promoted_when_it_passes_the_gate():
    d = decide(0.9, True, None, None)
    assert d.promoted and d.reason == "no production version yet"


def test_gate_failure_blocks_promotion_even_without_production():
    assert not decide(0.99, False, None, None).promoted
    assert decide(0.99, False, 0.5, "3").reason == "quality gate failed"


def test_only_a_better_version_is_promoted():
    assert decide(0.981, True, 0.980, "2").promoted
    tie = decide(0.98, True, 0.98, "2")
    assert not tie.promoted and "does not beat production (version 2) 0.9800" in tie.reason
    assert not decide(0.97, True, 0.98, "2").promoted
    assert not decide(0.9849, True, 0.98, "2", min_improvement=0.005).promoted
    d = decide(0.99, True, 0.98, "2", metric="noisy_accuracy")
    assert d.promoted and d.to_dict()["production_value"] == 0.98 and d.metric == "noisy_accuracy"


def test_a_version_of_other_classes_than_production_is_not_promoted_automatically():
    d = decide(0.99, True, None, "4", production_classes=["a", "b", "c"], classes=["a", "b"])
    assert not d.promoted
    assert (
        "production (version 4) classifies ['a', 'b', 'c'], this version ['a', 'b']: not comparable"
        in d.reason
    )
