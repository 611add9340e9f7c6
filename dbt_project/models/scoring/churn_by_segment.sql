-- Churn risk and value at risk per segment, one row per segment and snapshot week.
select
    segment,
    count(*) as customers,
    avg(churn_probability) as mean_churn_probability,
    sum(churn_probability) as expected_churners,
    avg(cast(churn_30_day as double)) as observed_churn_rate,
    avg(predicted_lifetime_value_usd) as mean_predicted_ltv_usd,
    sum(value_at_risk_usd) as value_at_risk_usd,
    snapshot_week
from {{ ref('predictions_final') }}
where snapshot_week = {{ snapshot_week_date() }}
group by segment, snapshot_week
