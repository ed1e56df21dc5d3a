-- Revenue against marketing spend per region and channel, over all days.
-- A full outer join keeps channels with orders but no spend (organic: spend 0, roi NULL) and
-- channels with spend but no orders (orders 0, revenue 0).
with orders_by_channel as (

    select
        region,
        channel,
        sum(case when is_revenue then 1 else 0 end) as orders,
        sum(case when is_revenue then amount else 0 end) as revenue
    from {{ ref('stg_orders') }}
    group by region, channel

),

spend_by_channel as (

    select region, channel, sum(spend) as spend
    from {{ ref('stg_marketing_spend') }}
    group by region, channel

),

joined as (

    select
        coalesce(orders_by_channel.region, spend_by_channel.region) as region,
        coalesce(orders_by_channel.channel, spend_by_channel.channel) as channel,
        cast(coalesce(orders_by_channel.orders, 0) as {{ dbt.type_bigint() }}) as orders,
        cast(coalesce(orders_by_channel.revenue, 0) as {{ mdstack.type_money() }}) as revenue,
        cast(coalesce(spend_by_channel.spend, 0) as {{ mdstack.type_money() }}) as spend
    from orders_by_channel
    full outer join spend_by_channel
        on spend_by_channel.region = orders_by_channel.region
        and spend_by_channel.channel = orders_by_channel.channel

)

select
    region,
    channel,
    orders,
    revenue,
    spend,
    {{ mdstack.safe_ratio('revenue - spend', 'spend') }} as roi
from joined
