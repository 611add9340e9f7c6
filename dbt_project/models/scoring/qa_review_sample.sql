-- 400 customers for a person to review: 100 from each quartile of predicted engagement, picked
-- by a hash of customer_id (deterministic, and not biased towards any id range).
with quartiles as (
    select
        *,
        ntile(4) over (order by predicted_engagement_score, customer_id) as engagement_quartile
    from {{ ref('predictions_final') }}
),

ranked as (
    select
        *,
        row_number() over (partition by engagement_quartile order by {{ dbt.hash('customer_id') }}) as sample_rank
    from quartiles
)

select *
from ranked
where sample_rank <= 100
