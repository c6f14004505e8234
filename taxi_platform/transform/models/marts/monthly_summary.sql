{{ config(**month_partitioned('pickup_date')) }}
-- Per day of the month and dataset: trips and revenue (Dagster charts each month's trips per day).
select
    pickup_date,
    dataset,
    cast(sum(trips) as {{ warehouse_type('bigint') }}) as trips,
    sum(revenue) as revenue
from {{ ref('daily_zone_trips') }}
where {{ in_run_months('pickup_date') }}
group by pickup_date, dataset
