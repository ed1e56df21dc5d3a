-- Revenue per region and calendar day, with day-over-day and week-over-week growth.
-- The day spine runs from each region's first to its last order day (any status), so days
-- without revenue appear with 0 and lag() compares true calendar neighbours.
with orders as (

    select region, order_day, amount, is_revenue
    from {{ ref('stg_orders') }}

),

bounds as (

    select region, min(order_day) as first_day, max(order_day) as last_day
    from orders
    group by region

),

numbers as (

    {{ dbt.generate_series(var('date_spine_days')) }}

),

spine as (

    select
        bounds.region,
        cast({{ dbt.dateadd('day', 'numbers.generated_number - 1', 'bounds.first_day') }} as date)
            as day
    from bounds
    cross join numbers
    where numbers.generated_number - 1
        <= {{ dbt.datediff('bounds.first_day', 'bounds.last_day', 'day') }}

),

revenue_days as (

    select
        region,
        order_day,
        count(*) as orders,
        sum(amount) as revenue
    from orders
    where is_revenue
    group by region, order_day

),

filled as (

    select
        spine.region,
        spine.day,
        cast(coalesce(revenue_days.orders, 0) as {{ dbt.type_bigint() }}) as orders,
        cast(coalesce(revenue_days.revenue, 0) as {{ mdstack.type_money() }}) as revenue
    from spine
    left join revenue_days
        on revenue_days.region = spine.region
        and revenue_days.order_day = spine.day

),

lagged as (

    select
        region,
        day,
        orders,
        revenue,
        lag(revenue, 1) over (partition by region order by day) as revenue_prev_day,
        lag(revenue, 7) over (partition by region order by day) as revenue_7d_ago
    from filled

)

select
    region,
    day,
    orders,
    revenue,
    revenue_prev_day,
    {{ mdstack.safe_ratio('revenue - revenue_prev_day', 'revenue_prev_day') }} as growth_pct,
    revenue_7d_ago,
    {{ mdstack.safe_ratio('revenue - revenue_7d_ago', 'revenue_7d_ago') }} as wow_growth_pct
from lagged
