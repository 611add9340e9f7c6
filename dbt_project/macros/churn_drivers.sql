{#- Which way a churn driver pushes the churn probability, from the sign of its contribution to the
    log-odds: null when there is no driver (churn served by its naive baseline) or it contributes 0. -#}
{% macro churn_driver_direction(driver, contribution) -%}
  case
    when {{ driver }} is null then null
    when {{ contribution }} > 0 then 'raises churn risk'
    when {{ contribution }} < 0 then 'lowers churn risk'
  end
{%- endmacro %}
