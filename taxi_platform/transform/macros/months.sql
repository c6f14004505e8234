{#- The run's months: [var('month_start'), var('month_end')), from Dagster's partition time window.
    Without them a run builds, replaces and judges every month. -#}

{% macro in_run_months(column) -%}
  {%- if var('month_start') and var('month_end') -%}
    ({{ column }} >= date '{{ var("month_start") }}' and {{ column }} < date '{{ var("month_end") }}')
  {%- else -%}
    (1 = 1)
  {%- endif -%}
{%- endmacro %}

{% macro run_month_starts() -%}
  {#- The first day of each month of the run, as SQL date literals (BigQuery's static partitions). -#}
  {%- if not (var('month_start') and var('month_end')) -%}
    {{ return(none) }}
  {%- endif -%}
  {%- set end = modules.datetime.date.fromisoformat(var('month_end')) -%}
  {%- set month = namespace(start=modules.datetime.date.fromisoformat(var('month_start'))) -%}
  {%- set starts = [] -%}
  {%- for _ in range(1200) -%}
    {%- if month.start < end -%}
      {%- do starts.append("date '" ~ month.start.isoformat() ~ "'") -%}
      {%- set month.start = (month.start.replace(day=28) + modules.datetime.timedelta(days=4)).replace(day=1) -%}
    {%- endif -%}
  {%- endfor -%}
  {{ return(starts) }}
{%- endmacro %}

{% macro first_of_month(column) -%}
  {%- if target.type == 'bigquery' -%} date_trunc({{ column }}, month)
  {%- else -%} cast(date_trunc('month', {{ column }}) as date)
  {%- endif -%}
{%- endmacro %}

{% macro month_partitioned(column) -%}
  {#- The config of a model built month by month: it replaces exactly the run's months of `column` (a
      DATE): delete + insert in one transaction in DuckDB (the `replace_months` strategy below),
      insert_overwrite of the months' partitions in BigQuery. A column added to or dropped from the
      model fails the run (on_schema_change: fail): rebuild it with a full refresh. -#}
  {%- set config = {
      'materialized': 'incremental',
      'incremental_strategy': 'replace_months',
      'on_schema_change': 'fail',
      'meta': {'month_column': column},
  } -%}
  {%- if target.type == 'bigquery' -%}
    {%- do config.update({
        'incremental_strategy': 'insert_overwrite',
        'partition_by': {'field': column, 'data_type': 'date', 'granularity': 'month'},
        'partitions': run_month_starts(),
    }) -%}
  {%- endif -%}
  {{ return(config) }}
{%- endmacro %}

{% macro get_incremental_replace_months_sql(arg_dict) -%}
  {#- delete+insert of the run's months: the month's rows are deleted by their month column whatever
      days the new rows cover, then the new rows inserted; dbt runs both in one transaction. -#}
  {%- set target_relation = arg_dict['target_relation'] -%}
  {%- set columns = get_quoted_csv(arg_dict['dest_columns'] | map(attribute='name')) -%}
  delete from {{ target_relation }} where {{ in_run_months(config.get('meta')['month_column']) }};
  insert into {{ target_relation }} ({{ columns }})
  select {{ columns }} from {{ arg_dict['temp_relation'] }}
{%- endmacro %}
