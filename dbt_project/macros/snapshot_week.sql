{#- The snapshot week being built (YYYY-MM-DD). Dagster sets ENGAGEMENT_SNAPSHOT_WEEK from the partition
    key; `--vars '{snapshot_week: …}'` or the project's default var otherwise. The env var is read at run
    time only (`execute`): dbt records an env var read while parsing and re-parses every file that read
    it once its value changes, which a new week always does (0.7 s of each dbt step). -#}
{% macro snapshot_week() -%}
  {%- if execute -%}
    {{ return(env_var("ENGAGEMENT_SNAPSHOT_WEEK", var("snapshot_week"))) }}
  {%- else -%}
    {{ return(var("snapshot_week")) }}
  {%- endif -%}
{%- endmacro %}

{#- The week as a SQL date, the same text on DuckDB and Athena (Trino). -#}
{% macro snapshot_week_date() -%}
  cast('{{ snapshot_week() }}' as date)
{%- endmacro %}
