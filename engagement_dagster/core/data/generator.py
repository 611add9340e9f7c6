"""Synthetic weekly customer snapshots with a known ground truth.

Every customer has stable latent traits (activity, sociality, commerce, satisfaction, content
taste); the observed behavioural columns are noisy views of those traits, and the four targets
are drawn from documented functions of the traits plus per-row noise. Nothing is normalised by
the batch, so a customer's outcome does not depend on who else is in the snapshot.

Truth (expected engagement, true churn probability, expected LTV, content affinity) goes to a
separate oracle table that training never reads; it tells how good a model could possibly be.

Population: customer index ``i`` is active in week ``w`` when ``w*turnover <= i < w*turnover + n``:
each week the oldest ``turnover`` customers leave and as many new ones join. Latent traits are
drawn per fixed-size block of indices, so a customer keeps its traits in every week and every
chunking, and the whole snapshot can be generated chunk by chunk in bounded memory.

Gender and age are drawn independently of every latent trait: they must not drive outcomes,
which makes fairness gaps measurable against a known zero.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

EPOCH = dt.date(2026, 1, 5)  # a Monday: week 0 of the synthetic world
BLOCK = 65_536  # latent traits are drawn per block of customer indices
# The seed platform's 12 content categories and its location codes (country-region).
CONTENT_CATEGORIES = (
    "travel", "business", "gaming", "tech", "music", "other",
    "education", "fitness", "art", "fashion", "lifestyle", "food",
)
LOCATIONS = (
    "US-CA", "US-NY", "US-TX", "US-FL", "US-IL", "US-WA", "UK-LON", "UK-MAN", "DE-BER", "DE-MUN",
    "FR-IDF", "ES-MAD", "IT-MIL", "CA-ON", "AU-NSW",
)
PLATFORMS = ("ios", "android", "web")
CHANNELS = ("organic", "paid_social", "referral", "search", "partnership")
TIERS = ("Nano", "Micro", "Mid", "Macro", "Mega")
FIRST_NAMES = ("Alex", "Sam", "Jordan", "Taylor", "Morgan", "Casey", "Riley", "Jamie", "Avery", "Quinn")
LAST_NAMES = ("Smith", "Garcia", "Chen", "Okafor", "Müller", "Rossi", "Kim", "Silva", "Novak", "Khan")
# Content taste is partly visible: latent traits, location and the hour a customer is active tilt
# it (columns: activity, sociality, commerce, satisfaction, reach), the rest is idiosyncratic.
TASTE_BY_TRAIT = {
    "travel": (0.0, 0.2, 0.6, 0.2, 0.0), "business": (0.0, 0.0, 0.9, 0.0, 0.0),
    "gaming": (0.4, -0.8, 0.0, 0.0, 0.0), "tech": (0.3, -0.4, 0.5, 0.0, 0.0),
    "music": (0.0, 0.3, 0.0, 0.0, 0.5), "other": (-0.4, 0.0, 0.0, 0.5, 0.0),
    "education": (0.0, 0.0, 0.4, 0.6, 0.0), "fitness": (0.9, 0.0, 0.0, 0.2, 0.0),
    "art": (0.0, 0.0, 0.0, 0.0, 0.9), "fashion": (0.0, 0.5, 0.0, 0.0, 0.6),
    "lifestyle": (0.0, 0.9, 0.0, 0.0, 0.0), "food": (0.0, 0.3, 0.3, 0.3, 0.0),
}
NIGHT_TASTE = {"gaming": 0.9, "music": 0.6, "art": 0.3}  # active 22:00–04:59
MORNING_TASTE = {"fitness": 0.8, "business": 0.6, "food": 0.3}  # active 05:00–09:59
ORACLE_COLUMNS = (
    "customer_id", "true_churn_probability", "expected_engagement_score", "expected_lifetime_value_usd",
    *(f"affinity_{c}" for c in CONTENT_CATEGORIES),
)


@dataclass(frozen=True)
class Snapshot:
    customers: pd.DataFrame
    oracle: pd.DataFrame


def week_index(snapshot_week: dt.date | str) -> int:
    """Weeks since EPOCH; the snapshot date must be a Monday on or after EPOCH."""
    day = dt.date.fromisoformat(snapshot_week) if isinstance(snapshot_week, str) else snapshot_week
    delta = (day - EPOCH).days
    if delta < 0 or delta % 7:
        raise ValueError(f"snapshot_week {day} must be a Monday on or after {EPOCH}")
    return delta // 7


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _latent_traits(seed: int, block: int, offsets: np.ndarray) -> dict[str, np.ndarray]:
    """Stable per-customer traits: drawn for a whole BLOCK of indices, so they never depend on
    the week or on how a snapshot is chunked."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0, block]))
    z = rng.standard_normal((BLOCK, 5))[offsets]
    traits = {
        "activity": z[:, 0],
        "sociality": 0.5 * z[:, 0] + 0.85 * z[:, 1],  # social people are a bit more active
        "commerce": z[:, 2],
        "satisfaction": z[:, 3],
        "reach": z[:, 4],
        "taste": rng.standard_normal((BLOCK, len(CONTENT_CATEGORIES)))[offsets],
        "age": rng.integers(18, 66, BLOCK)[offsets],
        "gender": rng.choice(4, BLOCK, p=[0.47, 0.47, 0.04, 0.02])[offsets],
        "location": rng.integers(0, len(LOCATIONS), BLOCK)[offsets],
        "platform": rng.integers(0, len(PLATFORMS), BLOCK)[offsets],
        "channel": rng.integers(0, len(CHANNELS), BLOCK)[offsets],
        "first_name": rng.integers(0, len(FIRST_NAMES), BLOCK)[offsets],
        "last_name": rng.integers(0, len(LAST_NAMES), BLOCK)[offsets],
        "phone": rng.integers(2_000_000_000, 9_999_999_999, BLOCK)[offsets],
        "peak_hour": rng.integers(0, 24, BLOCK)[offsets],
        "id_bytes": rng.integers(0, 256, (BLOCK, 16), dtype=np.uint8)[offsets],
    }
    return traits


_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_UUID_HEX_POSITIONS = [i for i in range(36) if i not in (8, 13, 18, 23)]


def _uuid4_strings(raw: np.ndarray) -> np.ndarray:
    """Random-looking (version 4) UUID strings from 16 bytes per row, vectorized: the seed's
    export identifies customers by UUID."""
    raw = raw.copy()
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    digits = np.empty((len(raw), 32), dtype=np.uint8)
    digits[:, 0::2], digits[:, 1::2] = _HEX[raw >> 4], _HEX[raw & 0x0F]
    text = np.full((len(raw), 36), ord("-"), dtype=np.uint8)
    text[:, _UUID_HEX_POSITIONS] = digits
    return text.view("S36").ravel().astype(str)


def _block(seed: int, week: int, idx: np.ndarray, first_active: np.ndarray) -> Snapshot:
    """The week's rows for customer indices ``idx``, all inside one BLOCK."""
    n = idx.size
    block = int(idx[0]) // BLOCK
    t = _latent_traits(seed, block, idx - block * BLOCK)
    # Weekly noise: a fresh stream per (seed, week, block), so chunking never changes a row.
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1, week, block]))
    drift = 0.01 * week  # behaviour drifts slowly: everyone a little more active over time
    act = t["activity"] + drift + 0.15 * rng.standard_normal(n)
    soc, com, sat, reach = t["sociality"], t["commerce"], t["satisfaction"], t["reach"]

    # Months on the platform; the week-0 population brings up to 3 years of history with it.
    tenure = (week - first_active) * 7 // 30 + 1 + np.where(first_active == 0, t["phone"] % 36, 0)
    new_customer = tenure <= 3
    sessions = rng.poisson(np.exp(1.6 + 0.55 * act))
    duration = np.exp(2.3 + 0.3 * act + 0.2 * sat + 0.25 * rng.standard_normal(n))
    swipes = rng.poisson(np.exp(3.0 + 0.5 * act + 0.3 * soc))
    match_p = _sigmoid(-1.6 + 0.5 * soc + 0.3 * sat)
    matches = rng.binomial(swipes, match_p)
    conn_sent = rng.poisson(np.exp(1.8 + 0.6 * soc))
    conn_recv = rng.poisson(np.exp(1.6 + 0.5 * soc + 0.4 * reach))
    posts = rng.poisson(np.exp(0.8 + 0.5 * soc + 0.4 * reach + 0.2 * act))
    stories = rng.poisson(np.exp(1.0 + 0.4 * soc + 0.3 * act))
    followers = np.round(np.exp(4.5 + 1.3 * reach + 0.4 * soc + 0.5 * rng.standard_normal(n))).astype(np.int64)
    following = np.round(np.exp(4.8 + 0.5 * soc + 0.4 * rng.standard_normal(n))).astype(np.int64)
    profile_views = rng.poisson(np.exp(2.5 + 0.6 * reach + 0.3 * act))
    virality = np.clip(_sigmoid(0.9 * reach + 0.3 * rng.standard_normal(n)), 0, 1)
    gig_sent = rng.poisson(np.exp(0.3 + 0.8 * com))
    gig_recv = rng.poisson(np.exp(0.1 + 0.7 * com + 0.3 * reach))
    active_gigs = rng.poisson(np.exp(-0.5 + 0.7 * com))
    revenue = np.where(com + 0.3 * rng.standard_normal(n) > -0.3,
                       np.exp(3.5 + 0.9 * com + 0.4 * rng.standard_normal(n)), 0.0)
    job_rating = np.clip(3.8 + 0.5 * sat + 0.3 * rng.standard_normal(n), 1, 5)
    influence = np.clip(0.50 + 0.18 * reach + 0.06 * soc + 0.05 * rng.standard_normal(n), 0, 1)
    risk = np.clip(0.30 - 0.12 * sat + 0.08 * rng.standard_normal(n), 0, 1)
    sentiment = np.clip(np.tanh(0.6 * sat + 0.3 * rng.standard_normal(n)), -1, 1)
    centrality = np.clip(_sigmoid(0.8 * soc + 0.5 * reach - 1 + 0.3 * rng.standard_normal(n)), 0, 1)
    traits = np.column_stack([t["activity"], soc, com, sat, reach])
    hour = t["peak_hour"]
    night, morning = (hour >= 22) | (hour < 5), (hour >= 5) & (hour < 10)
    city_taste = np.random.default_rng(np.random.SeedSequence([seed, 2])).normal(
        0, 0.6, (len(LOCATIONS), len(CONTENT_CATEGORIES)))
    taste_logits = (0.8 * t["taste"] + traits @ np.array([TASTE_BY_TRAIT[c] for c in CONTENT_CATEGORIES]).T
                    + city_taste[t["location"]]
                    + night[:, None] * np.array([NIGHT_TASTE.get(c, 0.0) for c in CONTENT_CATEGORIES])
                    + morning[:, None] * np.array([MORNING_TASTE.get(c, 0.0) for c in CONTENT_CATEGORIES]))
    taste_probs = np.exp(taste_logits - taste_logits.max(axis=1, keepdims=True))
    taste_probs /= taste_probs.sum(axis=1, keepdims=True)
    diversity = np.clip(1 - taste_probs.max(axis=1) + 0.05 * rng.standard_normal(n), 0, 1)
    consistency = np.clip(_sigmoid(0.7 * act + 0.5 * sat + 0.4 * rng.standard_normal(n)), 0, 1)
    # The 7-day trend is a view of the week's activity shock, not of the engagement target: a
    # change around 0 that, as in the seed's export, goes beyond ±1.
    trend = 0.2 * (act - t["activity"] - drift) / 0.15 + 0.25 * sat + 0.25 * rng.standard_normal(n)
    trust = np.clip(0.60 + 0.12 * sat + 0.06 * com + 0.08 * rng.standard_normal(n), 0, 1)
    response_hours = np.exp(1.5 - 0.4 * act - 0.2 * sat + 0.5 * rng.standard_normal(n))
    referrals = rng.poisson(np.exp(-0.3 + 0.5 * soc + 0.3 * sat))
    first_tx_days = np.where(revenue > 0, np.minimum(tenure * 30, rng.integers(1, 1500, n)), -1)
    premium = rng.poisson(np.exp(0.2 + 0.4 * com + 0.3 * act))
    tier = np.digitize(np.log1p(followers), [5.0, 6.5, 8.0, 9.5])

    # --- Ground truth: documented functions of the latent traits (nonlinear, with interactions).
    # Engagement is a fraction 0–1 (the seed's mean is about 0.37); churn about 37–39%.
    expected_engagement = np.clip(0.325 + 0.14 * np.tanh(act) + 0.08 * soc + 0.06 * sat
                                  + 0.05 * np.maximum(reach, 0) * np.maximum(act, 0), 0, 1)
    churn_logit = (-0.62 - 0.9 * sat - 0.7 * np.tanh(act) + 0.8 * new_customer
                   - 0.5 * np.maximum(com, 0) * (sat > 0) + 0.6 * (act < -1))
    true_churn = _sigmoid(churn_logit)
    expected_ltv = np.exp(4.0 + 0.8 * com + 0.3 * act + 0.2 * sat) * (1 - 0.6 * true_churn) * (1 + 0.5 * (premium > 2))
    # --- Outcomes: truth plus per-row noise.
    engagement = np.clip(expected_engagement + 0.07 * rng.standard_normal(n), 0, 1)
    churn = (rng.random(n) < true_churn).astype(np.int8)
    ltv_sigma = 0.5
    ltv = expected_ltv * np.exp(ltv_sigma * rng.standard_normal(n) - ltv_sigma**2 / 2)
    cum = taste_probs.cumsum(axis=1)
    content = (rng.random((n, 1)) > cum).sum(axis=1).clip(max=len(CONTENT_CATEGORIES) - 1)

    ids = pd.Series(_uuid4_strings(t["id_bytes"]))
    cats = np.array(CONTENT_CATEGORIES)
    snapshot_date = EPOCH + dt.timedelta(weeks=week)
    signup = pd.to_datetime(snapshot_date) - pd.to_timedelta(tenure * 30, unit="D")
    idle_days = np.where(sessions > 0, rng.integers(0, 7, n), rng.integers(7, 30, n))
    last_active = pd.to_datetime(snapshot_date) - pd.to_timedelta(idle_days, unit="D")
    customers = pd.DataFrame({
        "customer_id": ids,
        "age": t["age"].astype(np.int64),
        "gender": np.array(["M", "F", "O", "N"])[t["gender"]],
        "location": np.array(LOCATIONS)[t["location"]],
        "tenure_months": tenure.astype(np.int64),
        "sessions_last_7_days": sessions.astype(np.int64),
        "session_duration_avg_minutes": duration.round(2),
        "engagement_score": engagement.round(4),
        "swipes_right_last_30_days": swipes.astype(np.int64),
        "matches_last_30_days": matches.astype(np.int64),
        "match_success_rate": np.where(swipes > 0, 100 * matches / np.maximum(swipes, 1), 0.0).round(2),
        "connections_sent": conn_sent.astype(np.int64),
        "connections_received": conn_recv.astype(np.int64),
        "total_connections": (conn_sent + conn_recv).astype(np.int64),
        "posts_last_30_days": posts.astype(np.int64),
        "stories_last_30_days": stories.astype(np.int64),
        "followers_count": followers,
        "following_count": following,
        "profile_views_received": profile_views.astype(np.int64),
        "content_virality_score": virality.round(4),
        "gig_applications_sent": gig_sent.astype(np.int64),
        "gig_applications_received": gig_recv.astype(np.int64),
        "active_gigs_count": active_gigs.astype(np.int64),
        "transaction_revenue_last_90_days": revenue.round(2),
        "avg_job_completion_rating": job_rating.round(2),
        "influence_score": influence.round(4),
        "risk_score": risk.round(4),
        "avg_sentiment_score": sentiment.round(4),
        "network_centrality": centrality.round(4),
        "content_diversity_score": diversity.round(4),
        "session_consistency_score": consistency.round(4),
        "last_7_day_engagement_trend": trend.round(4),
        "trust_score": trust.round(4),
        "response_time_avg_hours": response_hours.round(2),
        "peak_activity_hour": t["peak_hour"].astype(np.int64),
        "referral_count": referrals.astype(np.int64),
        "time_since_first_transaction_days": first_tx_days.astype(np.int64),
        "premium_features_used_count": premium.astype(np.int64),
        "social_influence_tier": np.array(TIERS)[tier],
        "churn_30_day": churn.astype(np.int64),
        "lifetime_value_usd": ltv.round(2),
        "content_category_primary": cats[content],
        # Extra columns beyond the seed's 42, direct identifiers (PII) included on purpose.
        "email": "user" + pd.Series(idx + 1).astype(str) + "@example.com",
        "full_name": np.char.add(np.char.add(np.array(FIRST_NAMES)[t["first_name"]], " "),
                                 np.array(LAST_NAMES)[t["last_name"]]),
        "phone": "+1" + pd.Series(t["phone"]).astype(str),
        "signup_date": signup.date,
        "last_active_date": last_active.date,
        "platform": np.array(PLATFORMS)[t["platform"]],
        "acquisition_channel": np.array(CHANNELS)[t["channel"]],
    })
    oracle = pd.DataFrame({
        "customer_id": ids,
        "true_churn_probability": true_churn,
        "expected_engagement_score": expected_engagement,
        "expected_lifetime_value_usd": expected_ltv,
        **{f"affinity_{c}": taste_probs[:, j] for j, c in enumerate(CONTENT_CATEGORIES)},
    })
    return Snapshot(customers, oracle)


def generate_chunks(n_customers: int, snapshot_week: dt.date | str, seed: int = 42) -> Iterator[Snapshot]:
    """Yield the week's snapshot one BLOCK of customer indices at a time (bounded memory: about
    100 MB per chunk whatever ``n_customers`` is). Concatenated, the chunks are the snapshot."""
    if n_customers <= 0:
        raise ValueError("n_customers must be positive")
    week = week_index(snapshot_week)
    turnover = max(1, n_customers // 50)  # 2% of customers leave and 2% join each week
    start, stop = week * turnover, week * turnover + n_customers
    lo = start
    while lo < stop:  # chunk edges sit on BLOCK boundaries of the customer index
        hi = min((lo // BLOCK + 1) * BLOCK, stop)
        idx = np.arange(lo, hi, dtype=np.int64)
        # A customer first became active in the first week whose window contains its index.
        first_active = np.maximum(0, (idx - n_customers) // turnover + 1)
        yield _block(seed, week, idx, first_active)
        lo = hi


def generate_snapshot(n_customers: int, snapshot_week: dt.date | str, seed: int = 42) -> Snapshot:
    chunks = list(generate_chunks(n_customers, snapshot_week, seed))
    return Snapshot(pd.concat([c.customers for c in chunks], ignore_index=True),
                    pd.concat([c.oracle for c in chunks], ignore_index=True))


def write_snapshot(n_customers: int, snapshot_week: str, customers_path: Path, oracle_path: Path,
                   seed: int = 42) -> int:
    """Write a snapshot and its truth to Parquet one block at a time: memory stays at one block
    (about 100 MB) whatever ``n_customers`` is. Returns the rows written."""
    writers: dict[Path, pq.ParquetWriter] = {}
    rows = 0
    try:
        for chunk in generate_chunks(n_customers, snapshot_week, seed):
            for path, frame in ((customers_path, chunk.customers), (oracle_path, chunk.oracle)):
                table = pa.Table.from_pandas(frame, preserve_index=False)
                if path not in writers:
                    writers[path] = pq.ParquetWriter(path, table.schema, compression="zstd")
                writers[path].write_table(table)
            rows += len(chunk.customers)
    finally:
        for writer in writers.values():
            writer.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a synthetic weekly snapshot (and its truth) to Parquet.")
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--week", required=True, help="snapshot week, a Monday (YYYY-MM-DD)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, required=True, help="customers Parquet file; the truth goes beside it")
    args = parser.parse_args(argv)
    oracle = args.out.with_name(args.out.stem + ".truth.parquet")
    rows = write_snapshot(args.customers, args.week, args.out, oracle, args.seed)
    print(f"wrote {rows:,} customers to {args.out} and their truth to {oracle}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
