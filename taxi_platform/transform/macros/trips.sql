{% macro surrogate_key(columns) -%}
  {#- The course's trip_id (dbt_utils.generate_surrogate_key): md5 of the columns as text, '-' between
      them, a null as '_dbt_utils_surrogate_key_null_'. -#}
  {%- set parts = [] -%}
  {%- for column in columns -%}
    {%- do parts.append("coalesce(cast(" ~ column ~ " as " ~ dbt.type_string() ~ "), '_dbt_utils_surrogate_key_null_')") -%}
    {%- if not loop.last %}{% do parts.append("'-'") %}{% endif -%}
  {%- endfor -%}
  {{ dbt.hash(dbt.concat(parts)) }}
{%- endmacro %}

{% macro seconds_between(start, end) -%}
  {%- if target.type == 'bigquery' -%} datetime_diff({{ end }}, {{ start }}, second)
  {%- else -%} date_diff('second', {{ start }}, {{ end }})
  {%- endif -%}
{%- endmacro %}

{% macro minutes_between(start, end) -%}
  {#- The course's trip_duration_minutes: minute boundaries crossed from `start` to `end`. -#}
  {%- if target.type == 'bigquery' -%} datetime_diff({{ end }}, {{ start }}, minute)
  {%- else -%} date_diff('minute', {{ start }}, {{ end }})
  {%- endif -%}
{%- endmacro %}

{% macro zone_columns() -%}
  {#- A trip's pickup and dropoff location ids with their zone and borough: from a select whose trips
      are `t` and whose dim_zones are joined as `pz` (pickup) and `dz` (dropoff). -#}
    t.pickup_location_id,
    pz.borough as pickup_borough,
    pz.zone as pickup_zone,
    t.dropoff_location_id,
    dz.borough as dropoff_borough,
    dz.zone as dropoff_zone
{%- endmacro %}
