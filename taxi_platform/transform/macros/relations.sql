{#- A warehouse table or model that may not exist yet: the warehouse loads each dataset when its
    first month arrives. Missing, it reads as no rows of the declared columns (`data_type` in the yml),
    so a partly loaded warehouse builds. -#}

{% macro source_or_empty(source_name, table_name) -%}
  {%- set relation = source(source_name, table_name) -%}
  {%- if not execute or load_relation(relation) is not none -%}
    {{ return(relation) }}
  {%- endif -%}
  {%- set node = graph.sources.values() | selectattr('source_name', 'equalto', source_name)
      | selectattr('name', 'equalto', table_name) | first -%}
  {{ return(_no_rows(node)) }}
{%- endmacro %}

{% macro ref_or_empty(model_name) -%}
  {%- set relation = ref(model_name) -%}
  {%- if not execute or load_relation(relation) is not none -%}
    {{ return(relation) }}
  {%- endif -%}
  {%- set node = graph.nodes.values() | selectattr('resource_type', 'equalto', 'model')
      | selectattr('name', 'equalto', model_name) | first -%}
  {{ return(_no_rows(node)) }}
{%- endmacro %}

{% macro _no_rows(node) -%}
  {%- set columns = [] -%}
  {%- for column in node.columns.values() -%}
    {%- do columns.append('cast(null as ' ~ warehouse_type(column.data_type) ~ ') as ' ~ column.name) -%}
  {%- endfor -%}
  {{ return('(select ' ~ columns | join(', ') ~ ' from (select 1 as one) as nothing where 1 = 0)') }}
{%- endmacro %}

{% macro warehouse_type(name) -%}
  {#- The yml's data_type words, as this warehouse spells them (naive timestamps: BigQuery DATETIME). -#}
  {%- set bigquery = {'bigint': 'int64', 'double': 'float64', 'varchar': 'string', 'timestamp': 'datetime', 'date': 'date'} -%}
  {{ return(bigquery[name] if target.type == 'bigquery' else name) }}
{%- endmacro %}
