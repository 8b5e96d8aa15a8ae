"""Accuracy intervals and the paired test used to compare two recipes on the same images."""

import pytest

from edgenode.metrics import mcnemar_p, wilson_interval


def test_wilson_interval_matches_the_published_figures():
    lo, hi = wilson_interval(856, 945)  # the shipped aligned model's test accuracy in RESULTS.md
    assert (round(lo, 3), round(hi, 3)) == (0.886, 0.923)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(10, 10)
    assert hi == pytest.approx(1.0) and 0.70 < lo < 0.74  # not the degenerate [1, 1] of the normal approximation


@pytest.mark.parametrize("only_a,only_b,expected", [
    (0, 0, 1.0),
    (3, 3, 1.0),
    (0, 5, 2 / 32),
    (1, 10, 2 * (1 + 11) / 2**11),
    (30, 10, None),  # checked for symmetry only
])
def test_mcnemar_p_is_the_exact_two_sided_binomial(only_a, only_b, expected):
    p = mcnemar_p(only_a, only_b)
    assert p == pytest.approx(mcnemar_p(only_b, only_a))
    if expected is not None:
        assert p == pytest.approx(expected)
    assert 0.0 < p <= 1.0


def test_mcnemar_p_falls_as_disagreements_lean_one_way():
    assert mcnemar_p(20, 20) > mcnemar_p(25, 15) > mcnemar_p(30, 10) > mcnemar_p(35, 5)
    assert mcnemar_p(30, 10) < 0.01


def test_macro_metrics_average_over_the_classes_present_in_the_split():
    """Targets [0, 1, 1, 1], predictions [0, 0, 1, 1], class 2 absent: precision per class 1/2 and 2/2, recall
    1/1 and 2/3; the macro averages leave out class 2, which has no image to be right or wrong about."""
    import torch

    from edgenode.metrics import ClassificationMetrics

    m = ClassificationMetrics.from_predictions(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1]), 3)
    assert m.accuracy == 0.75 and m.n == 4 and m.accuracy_ci == wilson_interval(3, 4)
    assert m.macro_precision == pytest.approx(0.75) and m.macro_recall == pytest.approx(5 / 6)
    assert m.macro_f1 == pytest.approx((2 / 3 + 0.8) / 2)


def test_a_collapsed_classifier_gets_no_credit_for_the_classes_it_never_predicts():
    """Targets [0, 1, 2], every prediction 0 (the paper network's val collapse): classes 1 and 2 are never predicted,
    so their precision is 0, not undefined-and-skipped; macro precision 1/9, recall 1/3, F1 (1/2)/3."""
    import torch

    from edgenode.metrics import ClassificationMetrics

    m = ClassificationMetrics.from_predictions(torch.tensor([0, 0, 0]), torch.tensor([0, 1, 2]), 3)
    assert m.macro_precision == pytest.approx(1 / 9) and m.macro_recall == pytest.approx(1 / 3)
    assert m.macro_f1 == pytest.approx(1 / 6)
