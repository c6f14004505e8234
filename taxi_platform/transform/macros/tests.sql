{#- `where: "run_months(<date column>)"` narrows a test to the run's months (see months.sql); any
    other `where` works as dbt's own. dbt's get_where_subquery, overridden as its docs show. -#}
{% macro get_where_subquery(relation) -%}
  {%- set where = config.get('where') -%}
  {%- if where and where.startswith('run_months(') -%}
    {%- set where = in_run_months(where[11:-1]) -%}
  {%- endif -%}
  {%- if where -%}
    {%- set filtered -%} (select * from {{ relation }} where {{ where }}) as dbt_subquery {%- endset -%}
    {{ return(filtered) }}
  {%- else -%}
    {{ return(relation) }}
  {%- endif -%}
{%- endmacro %}

{#- Generic test: no two rows share the values of `columns` (dbt_utils.unique_combination_of_columns,
    written here: no hub packages). -#}
{% test unique_combination(model, columns) %}
select {{ columns | join(', ') }}, count(*) as copies
from {{ model }}
group by {{ columns | join(', ') }}
having count(*) > 1
{% endtest %}

{#- Generic test: `column_name` is not below `minimum` (nulls pass). -#}
{% test at_least(model, column_name, minimum) %}
select {{ column_name }}
from {{ model }}
where {{ column_name }} < {{ minimum }}
{% endtest %}
