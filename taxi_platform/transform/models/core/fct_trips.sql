{{ config(**month_partitioned('pickup_date')) }}
-- Yellow and green trips, one row per trip (the course's fct_trips): the run's months, published
-- from fct_trips_pending once they passed its tests.
select * from {{ ref('fct_trips_pending') }}
