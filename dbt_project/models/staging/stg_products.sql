-- One row per live product per region; soft-deleted rows are dropped.
with raw as (

    select
        {{ mdstack.raw_columns([
            'id', 'name', 'category', 'price', 'updated_at',
            '_mds_region', '_mds_run_id', '_mds_loaded_at', '_mds_deleted_at'
        ]) }}
    from {{ source('shop', 'products') }}

)

select
    cast(_mds_region as {{ dbt.type_string() }}) as region,
    cast(id as {{ dbt.type_bigint() }}) as product_id,
    cast(name as {{ dbt.type_string() }}) as product_name,
    cast(category as {{ dbt.type_string() }}) as category,
    cast(price as {{ mdstack.type_money() }}) as price,
    cast(updated_at as {{ dbt.type_timestamp() }}) as updated_at,
    _mds_run_id,
    _mds_loaded_at
from raw
where _mds_deleted_at is null
