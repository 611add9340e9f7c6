-- One row per snapshot week, the figures an analyst follows from week to week: customers, churn
-- (predicted and, where outcomes are known, observed), the at-risk list and its value, the distribution
-- of predicted engagement, high-engagement customers, anomalies, and the model versions that scored
-- the week. Percentiles are nearest-rank (the smallest value with at least p of the customers at or
-- below it): exact, and the same on DuckDB and Athena.
{%- set models = ["engagement_model", "churn_model", "ltv_model", "segment_model", "anomaly_model",
                  "content_recommender"] %}
with week as (
    select * from {{ ref('predictions_final') }}
    where snapshot_week = {{ snapshot_week_date() }}
),

totals as (
    select
        snapshot_week,
        count(*) as customers,
        avg(churn_probability) as mean_churn_probability,
        sum(churn_probability) as expected_churners,
        count(churn_30_day) as customers_with_known_outcome,
        avg(cast(churn_30_day as double)) as observed_churn_rate,
        count(case when churn_probability >= {{ var('at_risk_churn_probability') }} then 1 end)
            as high_churn_risk_customers,
        avg(predicted_engagement_score) as mean_predicted_engagement,
        count(case when predicted_engagement_score >= {{ var('high_engagement_score') }} then 1 end)
            as high_engagement_customers,
        sum(predicted_lifetime_value_usd) as total_predicted_ltv_usd,
        sum(value_at_risk_usd) as total_value_at_risk_usd,
        count(case when is_anomaly then 1 end) as anomalies,
        avg(case when is_anomaly then 1.0 else 0.0 end) as anomaly_share,
        {%- for model in models %}
        min({{ model }}_version) as {{ model }}_version{{ "," if not loop.last }}
        {%- endfor %}
    from week
    group by snapshot_week
),

engagement_ranks as (
    select
        predicted_engagement_score,
        row_number() over (order by predicted_engagement_score) as engagement_rank,
        count(*) over () as ranked_customers
    from week
),

engagement as (
    select
        {%- for p in [10, 50, 90] %}
        min(case when 100 * engagement_rank >= {{ p }} * ranked_customers then cast(predicted_engagement_score as double) end)
            as p{{ p }}_predicted_engagement{{ "," if not loop.last }}
        {%- endfor %}
    from engagement_ranks
),

at_risk as (
    select
        count(*) as at_risk_customers,
        coalesce(sum(predicted_lifetime_value_usd), 0) as at_risk_predicted_ltv_usd,
        coalesce(sum(value_at_risk_usd), 0) as at_risk_value_at_risk_usd
    from {{ ref('at_risk_customers') }}
    where snapshot_week = {{ snapshot_week_date() }}
)

select
    t.customers,
    t.mean_churn_probability,
    t.expected_churners,
    t.customers_with_known_outcome,
    t.observed_churn_rate,
    t.high_churn_risk_customers,
    a.at_risk_customers,
    a.at_risk_predicted_ltv_usd,
    a.at_risk_value_at_risk_usd,
    t.mean_predicted_engagement,
    e.p10_predicted_engagement,
    e.p50_predicted_engagement,
    e.p90_predicted_engagement,
    t.high_engagement_customers,
    t.total_predicted_ltv_usd,
    t.total_value_at_risk_usd,
    t.anomalies,
    t.anomaly_share,
    {%- for model in models %}
    t.{{ model }}_version,
    {%- endfor %}
    t.snapshot_week
from totals as t
cross join engagement as e
cross join at_risk as a
