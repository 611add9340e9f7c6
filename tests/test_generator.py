import numpy as np
import pandas as pd
import pytest

from engagement_dagster.core.data.contract import CONTRACT_COLUMNS
from engagement_dagster.core.data.generator import BLOCK, generate_chunks, generate_snapshot, week_index

WEEK, NEXT_WEEK = "2026-11-09", "2026-11-16"


@pytest.fixture(scope="module")
def snapshot():
    return generate_snapshot(20_000, WEEK, seed=7)


def test_has_the_seed_platforms_42_columns_first_then_extras_with_pii(snapshot):
    columns = list(snapshot.customers.columns)
    assert columns[:42] == list(CONTRACT_COLUMNS)
    assert {"email", "full_name", "phone", "signup_date", "platform"} <= set(columns[42:])


def test_deterministic_per_seed_and_week(snapshot):
    again = generate_snapshot(20_000, WEEK, seed=7)
    pd.testing.assert_frame_equal(snapshot.customers, again.customers)
    other_seed = generate_snapshot(20_000, WEEK, seed=8)
    assert not snapshot.customers["engagement_score"].equals(other_seed.customers["engagement_score"])


def test_chunked_generation_is_the_same_snapshot():
    n = BLOCK + 5_000  # spans two blocks
    chunks = list(generate_chunks(n, WEEK, seed=3))
    assert len(chunks) >= 2 and max(len(c.customers) for c in chunks) <= BLOCK
    whole = generate_snapshot(n, WEEK, seed=3).customers
    pd.testing.assert_frame_equal(pd.concat([c.customers for c in chunks], ignore_index=True), whole)


def test_weekly_turnover_and_stable_traits(snapshot):
    later = generate_snapshot(20_000, NEXT_WEEK, seed=7).customers
    now = snapshot.customers
    kept = set(now.customer_id) & set(later.customer_id)
    assert len(kept) == 20_000 - 400  # 2% leave, 2% join
    a = now.set_index("customer_id").loc[sorted(kept)]
    b = later.set_index("customer_id").loc[sorted(kept)]
    assert (a["age"] == b["age"]).all() and (a["gender"] == b["gender"]).all()
    # behaviour moves week to week but stays strongly correlated (slow drift + noise)
    corr = np.corrcoef(a["sessions_last_7_days"], b["sessions_last_7_days"])[0, 1]
    assert 0.5 < corr < 0.99


def test_oracle_is_separate_and_explains_outcomes(snapshot):
    c, o = snapshot.customers, snapshot.oracle
    assert (c["customer_id"] == o["customer_id"]).all()
    assert "true_churn_probability" not in c.columns and "churn_30_day" not in o.columns
    assert abs(c["churn_30_day"].mean() - o["true_churn_probability"].mean()) < 0.02
    assert np.corrcoef(c["engagement_score"], o["expected_engagement_score"])[0, 1] > 0.8
    affinity = o.filter(like="affinity_")
    assert np.allclose(affinity.sum(axis=1), 1.0)


def test_gender_and_age_do_not_drive_outcomes(snapshot):
    c = snapshot.customers
    by_gender = c[c["gender"].isin(["M", "F"])].groupby("gender")["churn_30_day"].mean()
    assert abs(by_gender["M"] - by_gender["F"]) < 0.03
    assert abs(np.corrcoef(c["age"], c["engagement_score"])[0, 1]) < 0.03


def test_snapshot_week_must_be_a_monday():
    assert week_index("2026-01-12") == 1
    with pytest.raises(ValueError, match="Monday"):
        week_index("2026-11-10")


def test_written_snapshot_is_the_generated_one(tmp_path):
    from engagement_dagster.core.data.generator import write_snapshot

    n = BLOCK + 1_000
    rows = write_snapshot(n, WEEK, tmp_path / "c.parquet", tmp_path / "t.parquet", seed=5)
    assert rows == n
    expected = generate_snapshot(n, WEEK, seed=5)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "c.parquet"), expected.customers, check_dtype=False)
    assert len(pd.read_parquet(tmp_path / "t.parquet")) == n
