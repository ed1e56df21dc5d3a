{#
  Columns of a raw table, for a staging model's first CTE: `"id" as id, ...`. mdstack names
  raw columns as the source spells them, quoted (Snowflake stores "id", not ID), so they are
  selected quoted and renamed to plain names the rest of the project uses unquoted.
#}
{% macro raw_columns(names) -%}
    {%- for name in names -%}
        {{ adapter.quote(name) }} as {{ name }}{{ ",\n    " if not loop.last }}
    {%- endfor -%}
{%- endmacro %}
