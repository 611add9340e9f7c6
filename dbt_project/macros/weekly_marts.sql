{#- The scoring marts keep every snapshot week: each run replaces the week it builds (snapshot_week()) and
    leaves every other week as it was. dbt_project.yml picks the mechanism per adapter:

    DuckDB (local): incremental_strategy 'replace_week', the strategy below. dbt's own delete+insert keyed on
      snapshot_week deletes only the weeks present in the new rows, so a week that is re-run and now has no
      rows for a mart (an empty at-risk list once churn falls back to its naive baseline) would keep its old
      rows; this one deletes the week whatever the new rows hold, then inserts them, in dbt's transaction.
    Athena (prod): Hive tables partitioned by snapshot_week with dbt-athena's insert_overwrite, which replaces
      the partitions present in the new rows; the pre-hook clear_snapshot_week() first drops the week's
      partition, for the same empty-week case. Athena wants partition columns last: every mart selects
      snapshot_week as its last column.
-#}

{#- A row without a week can only come from a mart built before the marts kept history (a one-week
    churn_by_segment had no snapshot_week column; on_schema_change adds it, null for those rows): it goes
    too, so an older local warehouse heals on its next run. -#}
{% macro get_incremental_replace_week_sql(arg_dict) -%}
  {%- set columns = get_quoted_csv(arg_dict["dest_columns"] | map(attribute="name")) -%}
  delete from {{ arg_dict["target_relation"] }}
  where snapshot_week = {{ snapshot_week_date() }} or snapshot_week is null;

  insert into {{ arg_dict["target_relation"] }} ({{ columns }})
  select {{ columns }}
  from {{ arg_dict["temp_relation"] }}
{%- endmacro %}


{#- A pre-hook of every scoring mart. -#}
{% macro clear_snapshot_week() -%}
  {{ return(adapter.dispatch('clear_snapshot_week', 'engagement')()) }}
{%- endmacro %}

{% macro default__clear_snapshot_week() -%}
  {#- Nothing to do before the build: the replace_week strategy deletes the week itself. -#}
{%- endmacro %}

{% macro athena__clear_snapshot_week() -%}
  {%- if execute and is_incremental() -%}
    {#- The Glue partition and its S3 objects, as dbt-athena's insert_overwrite removes them. -#}
    {%- do adapter.clean_up_partitions(this, "snapshot_week='" ~ snapshot_week() ~ "'") -%}
  {%- endif -%}
{%- endmacro %}


{#- The data tests of the scoring marts check the week being built (dbt_project.yml sets their `where` to
    "snapshot_week = __snapshot_week__"): a week's run tests what it wrote, not every earlier week again. A
    test that must see every week sets its own `where`. dbt's `where` config cannot call a macro, hence the
    placeholder, replaced here at run time (the pattern dbt's documentation gives for custom `where` logic). -#}
{% macro default__get_where_subquery(relation) -%}
  {%- set where = config.get('where', '') -%}
  {%- if where -%}
    {%- set where = where | replace('__snapshot_week__', snapshot_week_date()) -%}
    {%- do return('(select * from ' ~ relation ~ ' where ' ~ where ~ ') dbt_subquery') -%}
  {%- endif -%}
  {%- do return(relation) -%}
{%- endmacro %}
