{#
  On Snowflake, `ref()` and `source()` name a relation of the target's database without
  it (`staging.stg_orders`, not `ANALYTICS.staging.stg_orders`). Snowflake resolves an
  unqualified name in a view against the view's own database, so a view keeps reading
  its neighbours in any copy of the database: an audit environment published by
  `SWAP WITH` (whose views were built there, under its own name), a kept version of a
  run, a clone. A relation in another database (a source declared there, a model
  configured there, one `--defer` reads from production) keeps its database; elsewhere
  both are dbt's own.
#}
{% macro ref() %}
    {%- set version = kwargs.get('version', kwargs.get('v')) -%}
    {%- if (varargs | length) == 1 -%}
        {%- set relation = builtins.ref(varargs[0], version=version) -%}
    {%- else -%}
        {%- set relation = builtins.ref(varargs[0], varargs[1], version=version) -%}
    {%- endif -%}
    {{ return(relation_in_its_database(relation)) }}
{% endmacro %}

{% macro source(source_name, table_name) %}
    {{ return(relation_in_its_database(builtins.source(source_name, table_name))) }}
{% endmacro %}

{% macro relation_in_its_database(relation) %}
    {%- if target.type == 'snowflake' and relation is not none and relation.database
          and relation.database | upper == target.database | upper -%}
        {{ return(relation.include(database=False)) }}
    {%- endif -%}
    {{ return(relation) }}
{% endmacro %}
