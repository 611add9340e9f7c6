{#- Free text that a spreadsheet would run as a formula (a leading =, +, -, @, tab or carriage
    return) is prefixed with a quote, so an analyst's CSV/Excel export shows it as text. Columns
    with a known shape (location, customer_id) never hold such values: ingest refuses them. -#}
{% macro spreadsheet_safe(expr) -%}
  case when substr({{ expr }}, 1, 1) in ('=', '+', '-', '@', chr(9), chr(13))
       then '''' || {{ expr }} else {{ expr }} end
{%- endmacro %}
