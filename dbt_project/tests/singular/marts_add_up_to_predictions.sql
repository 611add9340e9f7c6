-- Fails when the per-segment mart or the weekly summary does not account for every customer.
{{ config(tags=["scoring"], meta={"description": "churn_by_segment and weekly_prediction_summary each account for every customer of predictions_final.",
                              "dagster": {"ref": {"name": "predictions_final"}}}) }}
select 'churn_by_segment' as mart
from (select sum(customers) as n from {{ ref('churn_by_segment') }}) as s
where s.n <> (select count(*) from {{ ref('predictions_final') }})
union all
select 'weekly_prediction_summary' as mart
from (select sum(customers) as n from {{ ref('weekly_prediction_summary') }}) as w
where w.n <> (select count(*) from {{ ref('predictions_final') }})
