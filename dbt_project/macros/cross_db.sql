{#
  Cross-database macros in dbt's dispatch style: a `default__` implementation that is
  standard SQL, overridable per adapter (`<adapter>__<macro>`) without touching models.
#}

{# A 64-bit float. dbt.type_float() is `float`, which DuckDB reads as a 32-bit REAL. #}
{% macro type_double() -%}
    {{ return(adapter.dispatch('type_double', 'mdstack')()) }}
{%- endmacro %}

{% macro default__type_double() -%}
    double precision
{%- endmacro %}

{# Money: exact decimal, the same on every warehouse (numeric(28,6)). #}
{% macro type_money() -%}
    {{ return(dbt.type_numeric()) }}
{%- endmacro %}

{# `numerator / denominator` as a double, NULL when the denominator is NULL or 0. #}
{% macro safe_ratio(numerator, denominator) -%}
    (cast({{ numerator }} as {{ mdstack.type_double() }})
        / nullif(cast({{ denominator }} as {{ mdstack.type_double() }}), 0))
{%- endmacro %}

{#
  Columns of a raw table, for a staging model's first CTE: `"id" as id, ...`. The sync engine
  names raw columns as the source spells them, quoted (Snowflake stores "id", not ID), so they
  are selected quoted and renamed to plain names the rest of the project uses unquoted.
#}
{% macro raw_columns(names) -%}
    {%- for name in names -%}
        {{ adapter.quote(name) }} as {{ name }}{{ ",\n    " if not loop.last }}
    {%- endfor -%}
{%- endmacro %}
