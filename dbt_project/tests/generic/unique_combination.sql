{#
  Composite-key uniqueness: no two rows share the values of all `combination` columns.
  Usage (model or source level):
    data_tests:
      - unique_combination:
          arguments:
            combination: [region, order_id]
#}
{% test unique_combination(model, combination) %}

select
    {{ combination | join(', ') }},
    count(*) as n_rows
from {{ model }}
group by {{ combination | join(', ') }}
having count(*) > 1

{% endtest %}
