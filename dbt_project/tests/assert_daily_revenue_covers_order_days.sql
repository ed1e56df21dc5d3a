-- Every day with a live order appears in daily_revenue (fails if the data spans more days
-- than var('date_spine_days')).
select orders.region, orders.order_day
from {{ ref('stg_orders') }} as orders
left join {{ ref('daily_revenue') }} as daily
    on daily.region = orders.region
    and daily.day = orders.order_day
where daily.day is null
