-- One row per live order and region, built incrementally: each run merges only the orders
-- the sync loaded since the last build (by _mds_loaded_at), and the post-hook removes orders
-- that were deleted at the source (hard deletes leave raw; soft ones leave stg_orders).
{{
    config(
        materialized='incremental',
        unique_key=['region', 'order_id'],
        incremental_strategy='delete+insert',
        on_schema_change='append_new_columns',
        post_hook=[
            "delete from {{ this }} where not exists (select 1 from {{ ref('stg_orders') }} as s
             where s.region = {{ this }}.region and s.order_id = {{ this }}.order_id)"
        ],
    )
}}

select
    region,
    order_id,
    customer_id,
    ordered_at,
    order_day,
    status,
    channel,
    amount,
    is_revenue,
    updated_at,
    _mds_loaded_at
from {{ ref('stg_orders') }}
{% if is_incremental() %}
where _mds_loaded_at > (select max(_mds_loaded_at) from {{ this }})
{% endif %}
