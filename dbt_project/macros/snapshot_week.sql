{#- The snapshot week being built (YYYY-MM-DD). Dagster sets ENGAGEMENT_SNAPSHOT_WEEK from the partition
    key; `--vars '{snapshot_week: …}'` or the project's default var otherwise. An env var re-parses only
    the files that call this macro, where a changed --vars would make dbt re-parse the whole project. -#}
{% macro snapshot_week() -%}
  {{ return(env_var("ENGAGEMENT_SNAPSHOT_WEEK", var("snapshot_week"))) }}
{%- endmacro %}

{#- The week as a SQL date, the same text on DuckDB and Athena (Trino). -#}
{% macro snapshot_week_date() -%}
  cast('{{ snapshot_week() }}' as date)
{%- endmacro %}
