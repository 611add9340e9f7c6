{#- Every column of the model that declares `meta: {range: [min, max]}` (null for an open bound;
    [null, null]: only "not null") is checked in one scan: a value that is null or outside its
    range fails. The test returns one row per failing column: how many rows are outside, how many
    are null, the observed min and max beside the range, so the failure says which column and by
    how much (stored with `store_failures`, read back into the Dagster check's description).
    Standard SQL: runs on DuckDB and Athena alike. -#}
{% test columns_within_meta_range(model) %}
{%- set ranged = [] -%}
{%- if execute -%}
  {%- set node = graph.nodes.values() | selectattr("resource_type", "equalto", "model")
                 | selectattr("name", "equalto", model.identifier) | first -%}
  {%- for column in node.columns.values() -%}
    {%- set bounds = column.meta.get("range") or column.config.meta.get("range") -%}
    {%- if bounds -%}
      {%- if bounds | length != 2 -%}
        {{ exceptions.raise_compiler_error("meta.range of " ~ model.identifier ~ "." ~ column.name
                                           ~ " must be [min, max], got " ~ bounds) }}
      {%- endif -%}
      {%- do ranged.append((column.name, bounds[0], bounds[1])) -%}
    {%- endif -%}
  {%- endfor -%}
  {%- if not ranged -%}
    {{ exceptions.raise_compiler_error(model.identifier ~ " has no column with meta.range to check") }}
  {%- endif -%}
{%- endif -%}
with outside as (
    select
    {%- for name, low, high in ranged %}
        sum(case when {{ name }} is null
                 {%- if low is not none %} or {{ name }} < {{ low }}{% endif %}
                 {%- if high is not none %} or {{ name }} > {{ high }}{% endif %}
            then 1 else 0 end) as {{ name }}__bad,
        sum(case when {{ name }} is null then 1 else 0 end) as {{ name }}__nulls,
        min({{ name }}) as {{ name }}__min,
        max({{ name }}) as {{ name }}__max{{ "," if not loop.last }}
    {%- endfor %}
    from {{ model }}
)
{%- for name, low, high in ranged %}
select
    '{{ name }}' as column_name,
    {{ name }}__bad as rows_outside_range,
    {{ name }}__nulls as null_rows,
    cast({{ name }}__min as double) as observed_min,
    cast({{ name }}__max as double) as observed_max,
    cast({{ 'null' if low is none else low }} as double) as range_min,
    cast({{ 'null' if high is none else high }} as double) as range_max
from outside where {{ name }}__bad > 0
{{ "union all" if not loop.last }}
{%- endfor %}
{% endtest %}
