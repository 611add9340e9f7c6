"""A file in the seed platform's own export format, written by the tests and independent of the
project's generator: `customer_engagement_dataset_extended.csv`'s 42 columns in its order, units
and shapes (UUID ids, location codes such as US-CA, engagement a fraction with mean ≈ 0.37,
`match_success_rate` a percent, `last_7_day_engagement_trend` beyond ±1, churn ≈ 38%, LTV
$5–$10,000, the seed's 12 content categories).

As in the seed's export, `content_category_primary` can be drawn independently of behaviour
(``category="noise"``): no model can beat popularity on it.

    python -m tests.seed_export --rows 100000 --out customer_engagement_dataset_extended.csv
"""

from __future__ import annotations

import argparse
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

SEED_CATEGORIES = ("travel", "business", "gaming", "tech", "music", "other", "education", "fitness", "art",
                   "fashion", "lifestyle", "food")
SEED_LOCATIONS = ("US-CA", "US-NY", "US-TX", "UK-LON", "DE-BER", "FR-IDF", "ES-MAD", "IN-MH", "BR-SP", "JP-TK")


def seed_export(n: int, seed: int = 0, category: str = "noise") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    activity, social, commerce, mood = rng.standard_normal((4, n))

    def poisson(log_mean):
        return rng.poisson(np.exp(log_mean))

    def fraction(a, b):
        return rng.beta(a, b, n).round(4)

    swipes = poisson(3.0 + 0.4 * activity + 0.3 * social)
    matches = rng.binomial(swipes, 0.2)
    sent, received = poisson(1.5 + 0.5 * social), poisson(1.4 + 0.5 * social)
    followers = np.round(np.exp(5 + 1.2 * social + 0.5 * rng.standard_normal(n))).astype(int)
    churn_p = 1 / (1 + np.exp(-(-0.55 - 0.9 * mood - 0.7 * activity)))
    if category == "noise":
        categories = rng.choice(SEED_CATEGORIES, n)
    else:  # a taste that behaviour reveals
        logits = np.column_stack([w1 * activity + w2 * social + w3 * commerce for w1, w2, w3 in
                                  rng.normal(0, 1.2, (len(SEED_CATEGORIES), 3))]) + rng.gumbel(size=(n, 12))
        categories = np.array(SEED_CATEGORIES)[logits.argmax(axis=1)]
    frame = pd.DataFrame({
        "customer_id": [str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in range(n)],
        "age": rng.integers(18, 70, n),
        "gender": rng.choice(["M", "F", "O", "N"], n, p=[0.48, 0.46, 0.04, 0.02]),
        "location": rng.choice(SEED_LOCATIONS, n),
        "tenure_months": rng.integers(1, 120, n),
        "sessions_last_7_days": poisson(1.6 + 0.5 * activity),
        "session_duration_avg_minutes": np.exp(2.5 + 0.3 * activity + 0.3 * rng.standard_normal(n)).round(2),
        "engagement_score": np.clip(0.37 + 0.15 * activity + 0.08 * social + 0.04 * mood
                                    + 0.06 * rng.standard_normal(n), 0, 1).round(4),
        "swipes_right_last_30_days": swipes,
        "matches_last_30_days": matches,
        "match_success_rate": np.where(swipes > 0, matches / np.maximum(swipes, 1) * 100, 0).round(2),
        "connections_sent": sent,
        "connections_received": received,
        "total_connections": sent + received,
        "posts_last_30_days": poisson(1.0 + 0.5 * social),
        "stories_last_30_days": poisson(1.2 + 0.4 * activity),
        "followers_count": followers,
        "following_count": np.round(np.exp(5 + 0.4 * rng.standard_normal(n))).astype(int),
        "profile_views_received": poisson(2.5 + 0.5 * social),
        "content_virality_score": fraction(2, 5),
        "gig_applications_sent": poisson(0.3 + 0.8 * commerce),
        "gig_applications_received": poisson(0.1 + 0.7 * commerce),
        "active_gigs_count": poisson(-0.5 + 0.7 * commerce),
        "transaction_revenue_last_90_days": np.where(commerce > -0.3, np.exp(3.5 + 0.9 * commerce), 0).round(2),
        "avg_job_completion_rating": rng.uniform(1, 5, n).round(2),
        "influence_score": fraction(2, 3),
        "risk_score": fraction(2, 6),
        "avg_sentiment_score": np.tanh(0.6 * mood + 0.3 * rng.standard_normal(n)).round(4),
        "network_centrality": fraction(2, 8),
        "content_diversity_score": fraction(3, 3),
        "session_consistency_score": fraction(3, 2),
        "last_7_day_engagement_trend": np.clip(0.45 * rng.standard_normal(n), -1.3, 1.3).round(4),
        "trust_score": fraction(5, 2),
        "response_time_avg_hours": rng.exponential(6, n).round(2),
        "peak_activity_hour": rng.integers(0, 24, n),
        "referral_count": poisson(-0.5 + 0.4 * social),
        "time_since_first_transaction_days": rng.integers(0, 1500, n),
        "premium_features_used_count": poisson(0.2 + 0.4 * commerce),
        "social_influence_tier": np.array(["Nano", "Micro", "Mid", "Macro", "Mega"])[
            np.digitize(np.log(followers), [5.5, 6.5, 7.5, 9.5])],
        "churn_30_day": (rng.random(n) < churn_p).astype(int),
        "lifetime_value_usd": np.clip(np.exp(5 + 0.8 * commerce + 0.3 * activity + 0.5 * rng.standard_normal(n)),
                                      5, 10_000).round(2),
        "content_category_primary": categories,
    })
    return frame


def write_seed_export(path: Path, n: int, seed: int = 0, category: str = "noise") -> pd.DataFrame:
    frame = seed_export(n, seed, category)
    frame.to_csv(path, index=False)
    return frame


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Write a CSV in the seed platform's export format.")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--category", choices=["noise", "behaviour"], default="noise")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    write_seed_export(args.out, args.rows, args.seed, args.category)
