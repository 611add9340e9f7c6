-- The week's customers joined to their predictions, one row per customer and snapshot week: each run
-- replaces its week and keeps the others (macros/weekly_marts.sql). PII-free: direct identifiers never
-- reach the lake, so none can appear here. Free-text columns go through spreadsheet_safe: the marts
-- are what analysts export. snapshot_week comes last, as Athena wants a partition column.
with predictions as (
    select * from {{ source('lake', 'customer_predictions') }}
    where cast(snapshot_week as date) = {{ snapshot_week_date() }}
)

select
    c.customer_id,
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
    {%- for i in range(1, 4) %}
    p.churn_driver_{{ i }},
    p.churn_driver_{{ i }}_contribution,
    {{ churn_driver_direction('p.churn_driver_' ~ i, 'p.churn_driver_' ~ i ~ '_contribution') }}
        as churn_driver_{{ i }}_direction,
    {%- endfor %}
    p.churn_drivers_method,
    p.engagement_model_version,
    p.churn_model_version,
    p.ltv_model_version,
    p.segment_model_version,
    p.anomaly_model_version,
    p.content_recommender_version,
    p.scored_at,
    c.snapshot_week
from {{ ref('stg_customers') }} as c
inner join predictions as p
    on c.customer_id = p.customer_id
