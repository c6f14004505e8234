-- The clean fhv trips in the models' vocabulary.
select
    trip_key,
    'FHV' as service_type,
    dispatching_base_num,
    affiliated_base_number,
    pu_location_id as pickup_location_id,
    do_location_id as dropoff_location_id,
    pickup_datetime,
    dropoff_datetime,
    pickup_date,
    sr_flag
from {{ source_or_empty('warehouse', 'fhv_trips') }}
