{{ config(meta={'month_column': 'pickup_date'}) }}
-- Write, audit, publish: the run's months of fct_trips are built here and tested (core.yml); only
-- when every error-severity test passes does fct_trips take them, in one transaction. It holds the
-- last run's months only.
{%- set columns = ['trip_key', 'service_type', 'vendor_id', 'rate_code_id', 'pickup_location_id',
    'dropoff_location_id', 'pickup_datetime', 'dropoff_datetime', 'pickup_date', 'store_and_fwd_flag',
    'passenger_count', 'trip_distance', 'trip_type', 'fare_amount', 'extra', 'mta_tax', 'tip_amount',
    'tolls_amount', 'ehail_fee', 'improvement_surcharge', 'total_amount', 'congestion_surcharge',
    'payment_type'] %}

with trips as (
    {%- for model in ['stg_green_trips', 'stg_yellow_trips'] %}
    select {{ columns | join(', ') }}
    from {{ ref_or_empty(model) }}
    where {{ in_run_months('pickup_date') }}
    {% if not loop.last %}union all{% endif %}
    {%- endfor %}
),

ranked as (
    -- The course's deduplication: one trip per vendor, pickup second, pickup zone and service, the
    -- earliest dropoff kept; trip_key breaks ties, so a rerun keeps the same rows.
    select
        *,
        row_number() over (
            partition by vendor_id, pickup_datetime, pickup_location_id, service_type
            order by dropoff_datetime nulls last, trip_key
        ) as copy_number
    from trips
)

select
    {{ surrogate_key(['t.vendor_id', 't.pickup_datetime', 't.pickup_location_id', 't.service_type']) }} as trip_id,
    t.trip_key,
    t.vendor_id,
    t.service_type,
    t.rate_code_id,
    {{ zone_columns() }},
    t.pickup_datetime,
    t.dropoff_datetime,
    t.pickup_date,
    t.store_and_fwd_flag,
    t.passenger_count,
    t.trip_distance,
    t.trip_type,
    {{ minutes_between('t.pickup_datetime', 't.dropoff_datetime') }} as trip_duration_minutes,
    t.fare_amount,
    t.extra,
    t.mta_tax,
    t.tip_amount,
    t.tolls_amount,
    t.ehail_fee,
    t.improvement_surcharge,
    t.total_amount,
    t.congestion_surcharge,
    coalesce(t.payment_type, 0) as payment_type,
    coalesce(pt.description, 'Unknown') as payment_type_description
from ranked as t
left join {{ ref('dim_zones') }} as pz on t.pickup_location_id = pz.location_id
left join {{ ref('dim_zones') }} as dz on t.dropoff_location_id = dz.location_id
left join {{ ref('dim_payment_types') }} as pt on coalesce(t.payment_type, 0) = pt.payment_type
where t.copy_number = 1
