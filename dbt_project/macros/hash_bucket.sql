{#- A stable bucket in [0, buckets) from the md5 of a value, identical on DuckDB and Athena:
    the first 8 hex digits of md5 read as an integer. -#}
{% macro hash_bucket(column, buckets) -%}
  {{ return(adapter.dispatch('hash_bucket', 'engagement')(column, buckets)) }}
{%- endmacro %}

{% macro default__hash_bucket(column, buckets) -%}
  (from_base(substr({{ dbt.hash(column) }}, 1, 8), 16) % {{ buckets }})
{%- endmacro %}

{% macro duckdb__hash_bucket(column, buckets) -%}
  (cast('0x' || substr({{ dbt.hash(column) }}, 1, 8) as bigint) % {{ buckets }})
{%- endmacro %}
