-- Usage counters by name (contract addendum 2): one JSON object, `usage`, instead of one
-- column per counter, so that a counter added by configuration needs no schema change.
--
-- Forward only, and safe to apply again. Run it in one transaction (`psql -1`) before the
-- gateways that write `usage` roll out: the columns of 0001 stay, and a trigger folds what
-- a gateway of the previous release still writes there into `usage`, so a fleet in the
-- middle of a rolling update loses no count.

alter table public.sessions
    add column if not exists usage jsonb not null default '{}';

do $$
begin
    if not exists (
        select from pg_catalog.pg_constraint where conname = 'sessions_usage_is_object'
    ) then
        alter table public.sessions add constraint sessions_usage_is_object
            check (jsonb_typeof(usage) = 'object');
    end if;
end
$$;

-- The counts of rows written before this migration. The version guard would skip these
-- updates (the version does not move), so it is off for the backfill only. A row whose
-- `usage` is set was backfilled already (or written since): applying this again changes
-- nothing.
alter table public.sessions disable trigger sessions_version_guard;
update public.sessions set usage = jsonb_build_object(
        'concepts_generated', concepts_generated,
        'concepts_refined', concepts_refined,
        'concepts_stored', concepts_stored
    )
    where usage = '{}'
      and (concepts_generated, concepts_refined, concepts_stored) <> (0, 0, 0);
alter table public.sessions enable trigger sessions_version_guard;

-- A writer of the previous release sets the old columns and leaves `usage` alone; fold the
-- counts it set into `usage`. This release never writes the old columns, so on its writes
-- they keep their stored values (or their zero defaults) and nothing is folded.
create or replace function public.sessions_fold_v1_usage()
returns trigger
language plpgsql
set search_path = ''
as $$
declare
    counter text;
    v1_count bigint;
begin
    foreach counter in array array['concepts_generated', 'concepts_refined', 'concepts_stored'] loop
        v1_count := (pg_catalog.to_jsonb(new) ->> counter)::bigint;
        if (tg_op = 'INSERT' and v1_count > 0)
            or (tg_op = 'UPDATE' and v1_count is distinct from (pg_catalog.to_jsonb(old) ->> counter)::bigint)
        then
            new.usage := new.usage || pg_catalog.jsonb_build_object(counter, v1_count);
        end if;
    end loop;
    return new;
end
$$;

drop trigger if exists sessions_fold_v1_usage on public.sessions;
create trigger sessions_fold_v1_usage
    before insert or update on public.sessions
    for each row execute function public.sessions_fold_v1_usage();

-- PostgREST learns of the new column without a restart.
notify pgrst, 'reload schema';
