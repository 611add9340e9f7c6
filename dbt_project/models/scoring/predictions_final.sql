-- The week's customers joined to their predictions. PII-free: direct identifiers never reach
-- the lake, so none can appear here. Free-text columns go through spreadsheet_safe: the marts
-- are what analysts export.
with predictions as (
    select * from {{ source('lake', 'customer_predictions') }}
    where cast(snapshot_week as date) = cast('{{ env_var("ENGAGEMENT_SNAPSHOT_WEEK", var("snapshot_week")) }}' as date)
)

select
    c.customer_id,
    c.snapshot_week,
    c.gender,
    c.age,
    c.location,
    {{ spreadsheet_safe('c.platform') }} as platform,
    c.tenure_months,
    -- observed outcomes (for QA and monitoring; null for a week whose outcomes are not known yet)
    c.engagement_score,
    c.churn_30_day,
    c.lifetime_value_usd,
    {{ spreadsheet_safe('c.content_category_primary') }} as content_category_primary,
    -- predictions
    p.predicted_engagement_score,
    p.churn_probability,
    p.predicted_lifetime_value_usd,
    p.churn_probability * p.predicted_lifetime_value_usd as value_at_risk_usd,
    p.segment_id,
    p.segment,
    p.anomaly_score,
    p.is_anomaly,
    {{ spreadsheet_safe('p.recommended_category_1') }} as recommended_category_1,
    {{ spreadsheet_safe('p.recommended_category_2') }} as recommended_category_2,
    {{ spreadsheet_safe('p.recommended_category_3') }} as recommended_category_3,
    p.churn_driver_1,
    p.churn_driver_1_contribution,
    p.churn_driver_2,
    p.churn_driver_2_contribution,
    p.churn_driver_3,
    p.churn_driver_3_contribution,
    p.churn_drivers_method,
    p.engagement_model_version,
    p.churn_model_version,
    p.ltv_model_version,
    p.segment_model_version,
    p.anomaly_model_version,
    p.content_recommender_version,
    p.scored_at
from {{ ref('stg_customers') }} as c
inner join predictions as p
    on c.customer_id = p.customer_id
