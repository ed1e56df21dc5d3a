-- @@stream of the @@source source: one row per record and region, soft-deleted rows dropped.
-- Rename and cast here; marts select from this model, never from the raw table.
@@edit
with raw as (

    select
        {{ raw_columns([
            @@raw_columns
        ]) }}
    from {{ source('@@source', '@@stream') }}

)

select
    _mds_region as region,
    @@columns,
    _mds_run_id,
    _mds_loaded_at
from raw
where _mds_deleted_at is null
