-- One row per live order line per region; soft-deleted rows are dropped.
with raw as (

    select
        {{ mdstack.raw_columns([
            'order_id', 'line_no', 'product_id', 'quantity', 'unit_price', 'updated_at',
            '_mds_region', '_mds_run_id', '_mds_loaded_at', '_mds_deleted_at'
        ]) }}
    from {{ source('shop', 'order_items') }}

)

select
    cast(_mds_region as {{ dbt.type_string() }}) as region,
    cast(order_id as {{ dbt.type_bigint() }}) as order_id,
    cast(line_no as {{ dbt.type_bigint() }}) as line_no,
    cast(product_id as {{ dbt.type_bigint() }}) as product_id,
    cast(quantity as {{ dbt.type_bigint() }}) as quantity,
    cast(unit_price as {{ mdstack.type_money() }}) as unit_price,
    cast(quantity * unit_price as {{ mdstack.type_money() }}) as line_amount,
    cast(updated_at as {{ dbt.type_timestamp() }}) as updated_at,
    _mds_run_id,
    _mds_loaded_at
from raw
where _mds_deleted_at is null
