-- Customers predicted to be highly engaged: candidates for referral and creator programmes.
select *
from {{ ref('predictions_final') }}
where predicted_engagement_score >= {{ var('high_engagement_score') }}
