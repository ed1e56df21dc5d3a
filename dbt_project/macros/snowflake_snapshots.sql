{#
  Snapshots on Snowflake, in statements fakesnow can also run (real Snowflake runs both forms):

  * The staging table of the changes is a transient table next to the snapshot, instead of a
    session-temporary table: fakesnow cannot qualify a temporary table's name nor DESCRIBE
    one, and dbt reads the staging table's columns with DESCRIBE. Not being session-private,
    its name carries the dbt invocation id
    ("snapshots"."customers_snapshot__dbt_tmp_<invocation id, dashes as underscores>"), so
    two builds into one database at once (two regions) never share a staging table.
    It is dropped after the merge. dbt's snapshot materialization has no cleanup step on
    failure (Jinja has no try/finally), so a failed merge leaves its staging table behind;
    being transient it has no fail-safe storage, and the name says which invocation left it
    (dbt writes the invocation id into `target/run_results.json`).
  * The MERGE is one statement, not wrapped in `begin; ... commit;`: Snowflake runs a single
    MERGE atomically, and fakesnow cannot run MERGE inside an explicit transaction. Its
    source is a subquery and its inserted values are qualified, the forms fakesnow binds.
#}
{% macro build_snapshot_staging_table(strategy, sql, target_relation) %}
    {{ return(adapter.dispatch('build_snapshot_staging_table', 'mdstack')(strategy, sql, target_relation)) }}
{% endmacro %}

{% macro default__build_snapshot_staging_table(strategy, sql, target_relation) %}
    {{ return(dbt.build_snapshot_staging_table(strategy, sql, target_relation)) }}
{% endmacro %}

{% macro snowflake__build_snapshot_staging_table(strategy, sql, target_relation) %}
    {%- set staging = make_temp_relation(target_relation, '__dbt_tmp_' ~ invocation_id | replace('-', '_')) -%}
    {% call statement('build_snapshot_staging_relation') %}
        create or replace transient table {{ staging }} as (
            {{ snapshot_staging_table(strategy, sql, target_relation) }}
        )
    {% endcall %}
    {{ return(staging) }}
{% endmacro %}

{% macro snowflake__post_snapshot(staging_relation) %}
    {% do adapter.drop_relation(staging_relation) %}
{% endmacro %}

{% macro snowflake__snapshot_merge_sql(target, source, insert_cols) -%}
    {%- set columns = config.get("snapshot_table_column_names") or get_snapshot_table_column_names() -%}
    {%- set values = [] -%}
    {%- for column in insert_cols -%}
        {%- do values.append("DBT_INTERNAL_SOURCE." ~ column) -%}
    {%- endfor -%}

    merge into {{ target.render() }} as DBT_INTERNAL_DEST
    using (select * from {{ source }}) as DBT_INTERNAL_SOURCE
    on DBT_INTERNAL_SOURCE.{{ columns.dbt_scd_id }} = DBT_INTERNAL_DEST.{{ columns.dbt_scd_id }}

    when matched
     {% if config.get("dbt_valid_to_current") %}
        {% set dest_valid_to = ("DBT_INTERNAL_DEST." ~ columns.dbt_valid_to) | trim %}
        and ({{ equals(dest_valid_to, config.get('dbt_valid_to_current') | trim) }}
             or {{ dest_valid_to }} is null)
     {% else %}
        and DBT_INTERNAL_DEST.{{ columns.dbt_valid_to }} is null
     {% endif %}
     and DBT_INTERNAL_SOURCE.dbt_change_type in ('update', 'delete')
        then update
        set {{ columns.dbt_valid_to }} = DBT_INTERNAL_SOURCE.{{ columns.dbt_valid_to }}

    when not matched
     and DBT_INTERNAL_SOURCE.dbt_change_type = 'insert'
        then insert ({{ insert_cols | join(', ') }})
        values ({{ values | join(', ') }})
{%- endmacro %}
