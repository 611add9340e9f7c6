-- Fails when a quartile of the week's qa_review_sample does not hold exactly 100 rows (for weeks with
-- at least 400 customers, every quartile has 100 to draw from).
{{ config(tags=["scoring"], meta={"description": "qa_review_sample holds exactly 100 rows per quartile of predicted engagement for the week built (weeks of 400+ customers).",
                              "dagster": {"ref": {"name": "qa_review_sample"}}}) }}
select engagement_quartile, count(*) as sampled
from {{ ref('qa_review_sample') }}
where snapshot_week = {{ snapshot_week_date() }}
group by engagement_quartile
having count(*) <> 100
   and (select count(*) from {{ ref('predictions_final') }} where snapshot_week = {{ snapshot_week_date() }}) >= 400
