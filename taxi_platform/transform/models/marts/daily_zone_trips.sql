{{ config(**month_partitioned('pickup_date')) }}
-- Per day, pickup zone and dataset: trips, revenue (yellow and green total_amount, fhvhv
-- base_passenger_fare, none for fhv), average distance and duration, with the zone's names. Every
-- clean trip counts (no deduplication), as the platform's first marts did.
{%- set double = warehouse_type('double') %}
{%- set datasets = [
    ('stg_yellow_trips', 'total_amount', 'trip_distance'),
    ('stg_green_trips', 'total_amount', 'trip_distance'),
    ('stg_fhv_trips', 'cast(null as ' ~ double ~ ')', 'cast(null as ' ~ double ~ ')'),
    ('stg_fhvhv_trips', 'base_passenger_fare', 'trip_miles'),
] %}

with trips as (
    {%- for model, revenue, distance in datasets %}
    select
        pickup_date,
        lower(service_type) as dataset,
        pickup_location_id,
        {{ revenue }} as revenue,
        {{ distance }} as distance,
        {{ seconds_between('pickup_datetime', 'dropoff_datetime') }} as seconds
    from {{ ref_or_empty(model) }}
    where {{ in_run_months('pickup_date') }}
    {% if not loop.last %}union all{% endif %}
    {%- endfor %}
)

select
    t.pickup_date,
    t.dataset,
    t.pickup_location_id as pu_location_id,
    z.borough,
    z.zone,
    count(*) as trips,
    sum(t.revenue) as revenue,
    avg(t.distance) as avg_distance,
    avg(t.seconds) / 60 as avg_duration_minutes
from trips as t
left join {{ ref('dim_zones') }} as z on z.location_id = t.pickup_location_id
group by t.pickup_date, t.dataset, t.pickup_location_id, z.borough, z.zone
