-- The taxi zones: 'NV' and 'NA' are the names of zones 264 and 265, not nulls.
select
    location_id,
    borough,
    zone,
    replace(service_zone, 'Boro', 'Green') as service_zone
from {{ source('warehouse', 'taxi_zones') }}
