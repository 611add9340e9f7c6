-- 400 customers a week for a person to review: 100 from each quartile of predicted engagement, picked
-- by a hash of customer_id (deterministic, and not biased towards any id range).
with week as (
    select * from {{ ref('predictions_final') }}
    where snapshot_week = {{ snapshot_week_date() }}
),

quartiles as (
    select
        customer_id,
        ntile(4) over (order by predicted_engagement_score, customer_id) as engagement_quartile
    from week
),

ranked as (
    select
        customer_id,
        engagement_quartile,
        row_number() over (partition by engagement_quartile order by {{ dbt.hash('customer_id') }}) as sample_rank
    from quartiles
)

-- The sample's own columns lead: snapshot_week, Athena's partition column, has to stay last.
select
    r.engagement_quartile,
    r.sample_rank,
    w.*
from week as w
inner join ranked as r
    on w.customer_id = r.customer_id
where r.sample_rank <= 100
