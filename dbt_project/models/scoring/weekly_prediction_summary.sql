-- One row per snapshot week: the headline figures of the refresh (the knowledge base's weekly summary
-- reads them; weekly_summary adds the distribution, the at-risk list and the model versions).
select
    count(*) as customers,
    avg(predicted_engagement_score) as mean_predicted_engagement,
    avg(churn_probability) as mean_churn_probability,
    sum(churn_probability) as expected_churners,
    sum(predicted_lifetime_value_usd) as total_predicted_ltv_usd,
    sum(value_at_risk_usd) as total_value_at_risk_usd,
    avg(case when is_anomaly then 1.0 else 0.0 end) as anomaly_share,
    count(case when predicted_engagement_score >= {{ var('high_engagement_score') }} then 1 end) as high_engagement_customers,
    count(case when churn_probability >= {{ var('at_risk_churn_probability') }} then 1 end) as high_churn_risk_customers,
    snapshot_week
from {{ ref('predictions_final') }}
where snapshot_week = {{ snapshot_week_date() }}
group by snapshot_week
