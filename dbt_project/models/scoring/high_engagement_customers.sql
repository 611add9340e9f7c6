-- Customers predicted to be highly engaged, one row per customer and snapshot week: candidates for
-- referral and creator programmes.
select *
from {{ ref('predictions_final') }}
where snapshot_week = {{ snapshot_week_date() }}
  and predicted_engagement_score >= {{ var('high_engagement_score') }}
