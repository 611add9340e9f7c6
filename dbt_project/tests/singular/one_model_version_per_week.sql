-- Fails when the week built was scored by more than one version of a model: one scoring run writes one
-- version per model, and weekly_summary reports that one.
{{ config(tags=["scoring"], meta={"description": "Every customer of the week built was scored by the same version of each model.",
                              "dagster": {"ref": {"name": "predictions_final"}}}) }}
{%- set models = ["engagement_model", "churn_model", "ltv_model", "segment_model", "anomaly_model",
                  "content_recommender"] %}
select
    {%- for model in models %}
    count(distinct {{ model }}_version) as {{ model }}_versions{{ "," if not loop.last }}
    {%- endfor %}
from {{ ref('predictions_final') }}
where snapshot_week = {{ snapshot_week_date() }}
having
    {%- for model in models %}
    count(distinct {{ model }}_version) > 1{{ " or" if not loop.last }}
    {%- endfor %}
