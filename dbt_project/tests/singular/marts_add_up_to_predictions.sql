-- Fails when, for the week being built, the per-segment mart or a weekly summary does not account for
-- every customer of predictions_final, or weekly_summary's at-risk figures are not the at-risk list's.
{{ config(tags=["scoring"], meta={"description": "For the week built, churn_by_segment, weekly_prediction_summary and weekly_summary account for every customer of predictions_final, and weekly_summary counts the at_risk_customers rows.",
                              "dagster": {"ref": {"name": "predictions_final"}}}) }}
with scored as (
    select count(*) as n from {{ ref('predictions_final') }} where snapshot_week = {{ snapshot_week_date() }}
),

at_risk as (
    select count(*) as n from {{ ref('at_risk_customers') }} where snapshot_week = {{ snapshot_week_date() }}
)

select 'churn_by_segment' as mart
from (select sum(customers) as n from {{ ref('churn_by_segment') }} where snapshot_week = {{ snapshot_week_date() }}) as s
where s.n <> (select n from scored)
union all
select 'weekly_prediction_summary' as mart
from (select sum(customers) as n from {{ ref('weekly_prediction_summary') }} where snapshot_week = {{ snapshot_week_date() }}) as w
where w.n <> (select n from scored)
union all
select 'weekly_summary' as mart
from {{ ref('weekly_summary') }} as w
where w.snapshot_week = {{ snapshot_week_date() }}
  and (w.customers <> (select n from scored) or w.at_risk_customers <> (select n from at_risk))
