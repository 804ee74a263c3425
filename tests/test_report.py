"""The report's statistics and terminal tables, on a synthetic 10,000-row table whose answers are known.

tests/synthetic.py: in every (method, quant) group each metric is base +- DELTA, half of each sign, so
mean = base, std = DELTA * sqrt(n / (n - 1)) and the 95% half-width = t(0.975, n - 1) * DELTA / sqrt(n - 1).
"""

import math

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from cvmf_ray.quant import QUANT_MODES
from cvmf_ray.report import aggregate, format_aggregate, format_rows
from cvmf_ray.report.figures import by_width
from cvmf_ray.report.frame import to_frame
from cvmf_ray.report.stats import estimate, excludes_zero, metric_range, ranking
from tests.synthetic import (
    BITS,
    DELTA,
    GRID_METHODS,
    GROUP_ROWS,
    METHODS,
    QUANTS,
    RECOVERY_DELTA,
    base,
    recovery_base,
    synthetic_table,
)

T_199, T_99 = 1.9719565442517533, 1.9842169515864174  # t(0.975, df): the 95% two-sided quantiles, n = 200 and 100


@pytest.fixture(scope="module")
def table() -> pa.Table:
    return synthetic_table()


@pytest.fixture(scope="module")
def stats(table):
    return aggregate(table).set_index(["method", "quant", "metric"])


def test_the_table_is_ten_thousand_rows_and_its_widths_are_the_registrys(table):
    ok = pc.sum(pc.equal(table["status"], "ok")).as_py()
    assert ok == len(METHODS) * len(QUANTS) * GROUP_ROWS + 1 == 10_001
    assert {q: QUANT_MODES.get(q).weight_bits for q in QUANTS} == BITS


@pytest.mark.parametrize("metric", ["test_accuracy", "forget_train_accuracy", "mia_efficacy", "retain_test_loss"])
def test_mean_std_n_and_interval_match_the_closed_form(stats, metric):
    half = T_199 * DELTA / math.sqrt(GROUP_ROWS - 1)
    for method in METHODS:
        for quant in QUANTS:
            row = stats.loc[(method, quant, metric)]
            assert row["n"] == GROUP_ROWS
            assert row["mean"] == pytest.approx(base(metric, method, quant), abs=1e-12)
            assert row["std"] == pytest.approx(DELTA * math.sqrt(GROUP_ROWS / (GROUP_ROWS - 1)), rel=1e-9)
            assert row["ci_high"] - row["mean"] == pytest.approx(half, rel=1e-9)
            assert row["mean"] - row["ci_low"] == pytest.approx(half, rel=1e-9)


def test_recovery_is_a_paired_interval_on_quantized_rows_only(stats):
    half = T_199 * RECOVERY_DELTA / math.sqrt(GROUP_ROWS - 1)
    recovery = stats.xs("recovery_forget_train_accuracy", level="metric")
    assert "fp32" not in recovery.index.get_level_values("quant")  # no fp32 parent to differ from
    for (method, quant), row in recovery.loc[METHODS].iterrows():
        assert row["mean"] == pytest.approx(recovery_base(method, quant), abs=1e-12)
        assert row["ci_high"] - row["mean"] == pytest.approx(half, rel=1e-9)
    marked = excludes_zero(recovery.loc[METHODS])
    expected = [abs(recovery_base(m, q)) > half for m, q in recovery.loc[METHODS].index]
    assert marked.tolist() == expected and 0 < sum(expected) < len(expected)  # some cells clear 0, some do not


def test_a_missing_value_does_not_count_towards_n(stats):
    row = stats.loc[("finetune", "int8", "privacy_score")]  # present for seeds < 10 only
    assert row["n"] == GROUP_ROWS // 2
    assert row["ci_high"] - row["mean"] == pytest.approx(T_99 * DELTA / math.sqrt(GROUP_ROWS // 2 - 1), rel=1e-9)


def test_one_row_has_no_interval_and_says_so(table, stats):
    row = stats.loc[("unsir", "fp32", "test_accuracy")]
    assert row["n"] == 1 and row["mean"] == 0.5
    assert math.isnan(row["std"]) and math.isnan(row["ci_low"]) and math.isnan(row["ci_high"])
    assert estimate(row["mean"], row["ci_low"], row["ci_high"], row["n"]) == "0.500 (n=1)"
    line = next(line for line in format_aggregate(aggregate(table)).splitlines() if "unsir" in line)
    assert line.split()[:4] == ["unsir", "fp32", "1", "0.500"] and "±" not in line


def test_zero_spread_over_many_rows_is_a_real_zero_width_interval(stats):
    row = stats.loc[("retrain", "int8", "gap_to_retrain")]
    assert row["n"] == GROUP_ROWS and row["mean"] == 0 and row["ci_low"] == row["ci_high"] == 0
    assert estimate(row["mean"], row["ci_low"], row["ci_high"], row["n"]) == "0.000 ± 0.000"


def test_failed_and_pending_rows_are_not_aggregated(stats):
    assert "boundary_shrink" not in stats.index.get_level_values("method")
    assert stats["n"].max() == GROUP_ROWS


def test_modes_of_one_width_are_averaged_per_run_not_pooled(table):
    frame = to_frame(table)
    stats = by_width(frame[frame["status"] == "ok"], ["test_accuracy"]).set_index(["method", "weight_bits"])
    row = stats.loc[("finetune", 16)]  # bf16 and fp16: 200 runs each, the same runs
    expected = (base("test_accuracy", "finetune", "bf16") + base("test_accuracy", "finetune", "fp16")) / 2
    assert row["n"] == GROUP_ROWS and row["mean"] == pytest.approx(expected, abs=1e-12)
    assert row["ci_high"] - row["mean"] == pytest.approx(T_199 * DELTA / math.sqrt(GROUP_ROWS - 1), rel=1e-9)


def test_methods_keep_the_grids_order_and_quant_modes_go_by_bits(table):
    frame = to_frame(table)
    assert list(frame["method"].cat.categories) == GRID_METHODS  # rows are shuffled: not first appearance
    assert list(frame["quant"].cat.categories) == ["fp32", "bf16", "fp16", "int8", "int4_weight"]
    first = frame.drop_duplicates(["method", "quant"])
    assert first[first["method"] == "finetune"]["quant"].tolist() == ["fp32", "bf16", "fp16", "int8", "int4_weight"]


def test_without_metadata_or_widths_the_order_comes_from_rows_and_registry():
    rows = [
        {"model": "m", "dataset": "d", "seed": 0, "forget_class": 0, "forget_fraction": None}
        | {"method": m, "quant": q, "status": "ok"}
        for m in ("salun", "finetune")
        for q in ("myquant", "int4_weight", "bf16", "fp8_e4m3", "fp32", "int8", "fp16")
    ]
    frame = to_frame(pa.Table.from_pylist(rows))
    assert list(frame["method"].cat.categories) == ["salun", "finetune"]  # first appearance
    expected = ["fp32", "bf16", "fp16", "fp8_e4m3", "int8", "int4_weight", "myquant"]  # unknown width last
    assert list(frame["quant"].cat.categories) == expected


def test_methods_are_ranked_by_gap_to_retrain(table):
    ranked = ranking(aggregate(table))
    fp32 = ranked[ranked["quant"] == "fp32"]
    expected = sorted((m for m in METHODS if m != "retrain"), key=lambda m: base("gap_to_retrain", m, "fp32"))
    assert fp32["method"].tolist() == expected
    assert fp32["rank"].tolist() == list(range(1, len(expected) + 1))


def test_per_row_table_has_unambiguous_headers_and_a_stable_order(table):
    text = format_rows(table)
    header = text.splitlines()[0].split()
    assert len(header) == len(set(header))
    assert {"test_acc", "forget_train_acc", "retain_train_acc", "gap_to_retrain", "recovery_forget_acc"} <= set(header)
    first = [line.split() for line in text.splitlines()[2:7]]
    method = header.index("method") + 1  # the forget column's "class 0" is two words
    assert [(r[method], r[method + 1]) for r in first] == [
        ("original", q) for q in ["fp32", "bf16", "fp16", "int8", "int4_weight"]
    ]
    assert text.splitlines()[-1] == "10021 rows: 10001 ok, 10 failed, 10 pending"


def test_aggregate_table_says_what_the_numbers_are(table):
    text = format_aggregate(aggregate(table))
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["method", "quant", "n"]
    assert lines[-2] == "model resnet18, dataset cifar10"  # the constant columns, named once
    assert "95% t-interval" in lines[-1]
    row = next(line for line in lines if line.startswith("finetune ") and " int8 " in line)
    half = T_199 * DELTA / math.sqrt(GROUP_ROWS - 1)
    assert f"{base('test_accuracy', 'finetune', 'int8'):.3f} ± {half:.3f}" in row
    assert len(lines) == 2 + len(METHODS) * len(QUANTS) + 1 + 2  # header, rule, groups, unsir, footer


def test_a_group_level_comparison_counts_once_per_group_not_once_per_seed():
    import pandas as pd

    group = {"model": "m", "dataset": "d", "method": "salun", "quant": "fp32", "status": "ok", "compare_key": "c1"}
    rows = [{**group, "seed": s, "forgetting_quality": 0.8, "privacy_score": 0.5 + s / 10} for s in range(3)]
    stats = aggregate(pd.DataFrame(rows)).set_index("metric")
    assert stats.loc["forgetting_quality", "n"] == 1 and math.isnan(stats.loc["forgetting_quality", "ci_low"])
    assert stats.loc["privacy_score", "n"] == 3  # a per-row comparison: one value per seed


BOUNDED = ("test_accuracy", "forget_train_f1", "mia_forget_auc", "mia_efficacy", "privacy_score")


def bounded_groups(values: list[list[float]]) -> pd.DataFrame:
    """One group (method g0, g1, ...) per list: each value in every metric of BOUNDED, as a recovery in [-1, 1]
    and as a loss."""
    rows = [
        {"model": "m", "dataset": "d", "method": f"g{g}", "quant": "fp32", "status": "ok", "seed": i}
        | dict.fromkeys(BOUNDED, v)
        | {"recovery_forget_train_accuracy": 2 * v - 1, "retain_test_loss": v / 10}
        for g, group in enumerate(values)
        for i, v in enumerate(group)
    ]
    return pd.DataFrame(rows)


def test_intervals_of_bounded_metrics_stay_in_their_range():
    """Before: accuracies near 1 got t-intervals past 1.0 (and near 0 below 0); now they are clipped there."""
    groups = [[1.0, 1.0, 0.9], [0.0, 0.0, 0.1], [1.0, 0.2], [0.995, 1.0, 1.0, 0.98, 1.0], [0.5, 0.52, 0.48]]
    stats = aggregate(bounded_groups(groups))
    for metric, rows in stats.groupby("metric", observed=True):
        low, high = metric_range(str(metric))
        assert (rows["ci_low"] >= low).all() and (rows["ci_high"] <= high).all(), metric
        assert (rows["ci_low"] <= rows["mean"]).all() and (rows["mean"] <= rows["ci_high"]).all()
    accuracy = stats[stats["metric"] == "test_accuracy"].set_index("method")
    assert accuracy.loc["g0", "ci_high"] == 1.0 and accuracy.loc["g1", "ci_low"] == 0.0  # cut at the bounds ...
    assert accuracy.loc["g2", ["ci_low", "ci_high"]].tolist() == [0.0, 1.0]  # ... on both sides at once
    inside = accuracy.loc["g4"]  # far from the bounds: the t-interval, unchanged
    half = inside["ci_high"] - inside["mean"]
    assert half > 0 and inside["mean"] - inside["ci_low"] == pytest.approx(half)
    recovery = stats[stats["metric"] == "recovery_forget_train_accuracy"]
    assert recovery["ci_high"].max() == 1.0 and recovery["ci_low"].min() == -1.0  # a difference of shares
    assert (stats.loc[stats["metric"] == "retain_test_loss", "ci_low"] >= 0).all()  # a loss: bounded below only


def test_a_clipped_interval_is_shown_as_its_bounds_not_a_half_width():
    stats = aggregate(bounded_groups([[1.0, 1.0, 0.9]])).set_index("metric")
    row = stats.loc["test_accuracy"]
    assert estimate(row["mean"], row["ci_low"], row["ci_high"], row["n"]) == f"0.967 [{row['ci_low']:.3f}, 1.000]"
    text = format_aggregate(stats.reset_index())
    assert "[" in text.splitlines()[2] and "clipped to the metric's range ([0, 1]" in text.splitlines()[-1]


def test_metric_ranges():
    assert metric_range("test_accuracy") == metric_range("mia_forget_auc") == metric_range("forget_test_f1") == (0, 1)
    assert metric_range("mia_efficacy") == metric_range("gap_to_retrain") == (0, 1)
    assert metric_range("recovery_mia_efficacy") == (-1, 1)
    assert metric_range("train_seconds") == metric_range("kl_to_retrain_test") == (0, math.inf)
    assert metric_range("relearn_steps") == metric_range("speedup_over_retrain") == (0, math.inf)
    assert metric_range("quant_update_ratio") == (-math.inf, math.inf)
