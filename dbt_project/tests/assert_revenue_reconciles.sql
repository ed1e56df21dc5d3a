-- Both marts use the same revenue definition: per region, the sum over days must equal the
-- sum over channels (to the cent).
with by_day as (

    select region, sum(revenue) as revenue
    from {{ ref('daily_revenue') }}
    group by region

),

by_channel as (

    select region, sum(revenue) as revenue
    from {{ ref('marketing_roi') }}
    group by region

)

select
    coalesce(by_day.region, by_channel.region) as region,
    by_day.revenue as daily_revenue_total,
    by_channel.revenue as marketing_roi_total
from by_day
full outer join by_channel
    on by_channel.region = by_day.region
where by_day.region is null
    or by_channel.region is null
    or abs(by_day.revenue - by_channel.revenue) >= 0.01
