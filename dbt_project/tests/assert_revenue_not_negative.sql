-- Revenue is a sum of order amounts: a negative day or channel means bad source data.
select 'daily_revenue' as model, region, cast(day as {{ dbt.type_string() }}) as grain, revenue
from {{ ref('daily_revenue') }}
where revenue < 0

union all

select 'marketing_roi' as model, region, channel as grain, revenue
from {{ ref('marketing_roi') }}
where revenue < 0
