-- One row for the week: the headline figures of the refresh.
select
    snapshot_week,
    count(*) as customers,
    avg(predicted_engagement_score) as mean_predicted_engagement,
    avg(churn_probability) as mean_churn_probability,
    sum(churn_probability) as expected_churners,
    sum(predicted_lifetime_value_usd) as total_predicted_ltv_usd,
    sum(value_at_risk_usd) as total_value_at_risk_usd,
    avg(case when is_anomaly then 1.0 else 0.0 end) as anomaly_share,
    sum(case when predicted_engagement_score >= {{ var('high_engagement_score') }} then 1 else 0 end) as high_engagement_customers,
    sum(case when churn_probability >= {{ var('at_risk_churn_probability') }} then 1 else 0 end) as high_churn_risk_customers
from {{ ref('predictions_final') }}
group by snapshot_week
