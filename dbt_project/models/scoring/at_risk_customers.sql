-- High churn probability × high predicted value: the customers worth a retention offer, most
-- value at risk first. Their churn drivers are exact TreeSHAP (see the scoring module). Empty
-- while churn is served by its naive baseline: one rate for everyone singles out no one.
with ranked as (
    select
        *,
        percent_rank() over (order by predicted_lifetime_value_usd) as ltv_percentile
    from {{ ref('predictions_final') }}
)

select *
from ranked
where churn_probability >= {{ var('at_risk_churn_probability') }}
  and churn_drivers_method != 'none'
  and ltv_percentile >= {{ var('at_risk_ltv_percentile') }}
