{#
  Composite-key uniqueness: no two rows share the values of all `combination` columns.
  Usage (model or source level):
    data_tests:
      - unique_combination:
          arguments:
            combination: [region, order_id]
            quote: true   # optional: the columns' names are case-sensitive (raw tables)
#}
{% test unique_combination(model, combination, quote=false) %}

{%- set columns = [] -%}
{%- for column in combination -%}
    {%- do columns.append(adapter.quote(column) if quote else column) -%}
{%- endfor %}

select
    {{ columns | join(', ') }},
    count(*) as n_rows
from {{ model }}
group by {{ columns | join(', ') }}
having count(*) > 1

{% endtest %}
