-- High churn probability × high predicted value: the customers worth a retention offer, one row per
-- customer and snapshot week. Their churn drivers are exact TreeSHAP (see the scoring module). A week
-- has no row while churn is served by its naive baseline: one rate for everyone singles out no one.
with week as (
    select * from {{ ref('predictions_final') }}
    where snapshot_week = {{ snapshot_week_date() }}
),

ltv_ranks as (
    select
        customer_id,
        percent_rank() over (order by predicted_lifetime_value_usd) as ltv_percentile
    from week
)

-- ltv_percentile leads: snapshot_week, Athena's partition column, has to stay last.
select
    r.ltv_percentile,
    w.*
from week as w
inner join ltv_ranks as r
    on w.customer_id = r.customer_id
where w.churn_probability >= {{ var('at_risk_churn_probability') }}
  and w.churn_drivers_method != 'none'
  and r.ltv_percentile >= {{ var('at_risk_ltv_percentile') }}
