{#
  Composite-key referential integrity: every non-null `columns` tuple of the model exists as a
  `to_columns` tuple in `to`. Ids are unique only within a region, so joins carry the region.
  Usage:
    data_tests:
      - relationships_composite:
          arguments:
            columns: [region, customer_id]
            to: ref('stg_customers')
            to_columns: [region, customer_id]
#}
{% test relationships_composite(model, columns, to, to_columns) %}

{%- if columns | length != to_columns | length -%}
    {{ exceptions.raise_compiler_error(
        "relationships_composite: columns and to_columns must have the same length") }}
{%- endif %}

select
    {% for column in columns -%}
    child.{{ column }}{{ ", " if not loop.last }}
    {% endfor %}
from {{ model }} as child
left join {{ to }} as parent
    on {% for column in columns -%}
    child.{{ column }} = parent.{{ to_columns[loop.index0] }}
    {{- " and " if not loop.last }}
    {% endfor %}
where
    {% for column in columns -%}
    child.{{ column }} is not null and
    {% endfor -%}
    parent.{{ to_columns[0] }} is null

{% endtest %}
