-- One row per (region, day, channel). The raw table is append-only: when a day is restated,
-- the latest load wins (ties broken by run id). Soft-deleted rows are dropped.
with raw as (

    select
        {{ mdstack.raw_columns([
            'day', 'channel', 'spend', 'impressions', 'clicks',
            '_mds_region', '_mds_run_id', '_mds_loaded_at', '_mds_deleted_at'
        ]) }}
    from {{ source('shop', 'marketing_spend') }}

),

ranked as (

    select
        _mds_region,
        day,
        channel,
        spend,
        impressions,
        clicks,
        _mds_run_id,
        _mds_loaded_at,
        row_number() over (
            partition by _mds_region, day, channel
            order by _mds_loaded_at desc, _mds_run_id desc
        ) as load_rank
    from raw
    where _mds_deleted_at is null

)

select
    cast(_mds_region as {{ dbt.type_string() }}) as region,
    cast(day as date) as spend_day,
    cast(channel as {{ dbt.type_string() }}) as channel,
    cast(spend as {{ mdstack.type_money() }}) as spend,
    cast(impressions as {{ dbt.type_bigint() }}) as impressions,
    cast(clicks as {{ dbt.type_bigint() }}) as clicks,
    _mds_run_id,
    _mds_loaded_at
from ranked
where load_rank = 1
