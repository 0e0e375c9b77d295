-- Erasure (contract addendum 2, "forget me"): `public.erase_session(id)` deletes a
-- session's row and remembers its id, and a trigger skips every later write of a
-- remembered id. A write-behind batch claimed before an erasure and written after it would
-- otherwise re-create the row the erasure deleted.
--
-- The gateway erases through `POST /rpc/erase_session` with `{"session_id": "<uuid>"}`.
-- The function runs with its owner's rights, so neither `service_role` nor the gateway's own
-- role (0003) needs DELETE on `sessions` or any right on `erased_sessions`.
--
-- Forward only, and safe to apply again. Run it in one transaction (`psql -1`), after 0001
-- to 0003, before the gateways that erase roll out.

-- Only ids: a random UUID of a session that no longer exists says nothing about anyone.
create table if not exists public.erased_sessions (
    id uuid primary key,
    erased_at timestamptz not null default now()
);

-- Nobody reaches it through the API: only the two functions below, as its owner.
revoke all on table public.erased_sessions from public, anon, authenticated, service_role;
alter table public.erased_sessions enable row level security;

-- Returning NULL from a BEFORE trigger skips the row: an upsert of an erased id writes
-- nothing (and PostgREST still answers 201, so the flusher settles the batch).
create or replace function public.sessions_not_erased()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
    if exists (select from public.erased_sessions where id = new.id) then
        return null;
    end if;
    return new;
end
$$;

drop trigger if exists sessions_not_erased on public.sessions;
create trigger sessions_not_erased
    before insert or update on public.sessions
    for each row execute function public.sessions_not_erased();

-- One transaction (PostgREST runs each call in one): the id is remembered before the row
-- goes, so no write can land in between.
create or replace function public.erase_session(session_id uuid)
returns void
language plpgsql
security definer
set search_path = ''
as $$
begin
    insert into public.erased_sessions (id) values (session_id) on conflict (id) do nothing;
    delete from public.sessions where id = session_id;
end
$$;

-- Functions are executable by PUBLIC by default, and Supabase's default privileges grant
-- new ones to anon and authenticated: only the gateway's roles may erase.
revoke all on function public.erase_session(uuid) from public, anon, authenticated;
revoke all on function public.sessions_not_erased() from public, anon, authenticated;
grant execute on function public.erase_session(uuid) to service_role;

do $$
begin
    if exists (select from pg_catalog.pg_roles where rolname = 'sessiongate_gateway') then
        grant execute on function public.erase_session(uuid) to sessiongate_gateway;
    end if;
end
$$;

-- PostgREST learns of the new function without a restart.
notify pgrst, 'reload schema';
