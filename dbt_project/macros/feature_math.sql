{#- ln(1 + x) for x >= 0, in SQL both DuckDB and Trino accept. -#}
{% macro log1p(expr) -%}
  ln(1.0 + cast({{ expr }} as double))
{%- endmacro %}

{#- a / (b + smoothing): a ratio that is defined when b is 0. -#}
{% macro smoothed_ratio(numerator, denominator, smoothing=1.0) -%}
  (cast({{ numerator }} as double) / (cast({{ denominator }} as double) + {{ smoothing }}))
{%- endmacro %}
