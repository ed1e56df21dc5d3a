-- One row per live customer per region; soft-deleted rows are dropped.
with raw as (

    select
        {{ mdstack.raw_columns([
            'id', 'name', 'email', 'segment', 'signup_day', 'updated_at',
            '_mds_region', '_mds_run_id', '_mds_loaded_at', '_mds_deleted_at'
        ]) }}
    from {{ source('shop', 'customers') }}

)

select
    cast(_mds_region as {{ dbt.type_string() }}) as region,
    cast(id as {{ dbt.type_bigint() }}) as customer_id,
    cast(name as {{ dbt.type_string() }}) as customer_name,
    cast(email as {{ dbt.type_string() }}) as email,
    cast(segment as {{ dbt.type_string() }}) as segment,
    cast(signup_day as date) as signup_day,
    cast(updated_at as {{ dbt.type_timestamp() }}) as updated_at,
    _mds_run_id,
    _mds_loaded_at
from raw
where _mds_deleted_at is null
