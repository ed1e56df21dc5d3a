{#
  The one definition of a revenue-bearing order, used by every mart:
  an order counts towards revenue unless it was cancelled or returned.
#}
{% macro non_revenue_statuses() -%}
    {{ return(['cancelled', 'returned']) }}
{%- endmacro %}

{% macro is_revenue_order(status_column) -%}
    ({{ status_column }} not in (
        {%- for status in mdstack.non_revenue_statuses() -%}
            '{{ status }}'{{ ", " if not loop.last }}
        {%- endfor -%}
    ))
{%- endmacro %}
