-- One row per live order per region; soft-deleted rows are dropped.
with raw as (

    select
        {{ mdstack.raw_columns([
            'id', 'customer_id', 'ordered_at', 'status', 'channel', 'amount', 'updated_at',
            '_mds_region', '_mds_run_id', '_mds_loaded_at', '_mds_deleted_at'
        ]) }}
    from {{ source('shop', 'orders') }}

)

select
    cast(_mds_region as {{ dbt.type_string() }}) as region,
    cast(id as {{ dbt.type_bigint() }}) as order_id,
    cast(customer_id as {{ dbt.type_bigint() }}) as customer_id,
    cast(ordered_at as {{ dbt.type_timestamp() }}) as ordered_at,
    cast(ordered_at as date) as order_day,
    cast(status as {{ dbt.type_string() }}) as status,
    cast(channel as {{ dbt.type_string() }}) as channel,
    cast(amount as {{ mdstack.type_money() }}) as amount,
    {{ mdstack.is_revenue_order('status') }} as is_revenue,
    cast(updated_at as {{ dbt.type_timestamp() }}) as updated_at,
    _mds_run_id,
    _mds_loaded_at
from raw
where _mds_deleted_at is null
