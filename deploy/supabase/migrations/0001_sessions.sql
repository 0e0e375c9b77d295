-- Sessions written behind by sessiongate through PostgREST (upserts on `id`).
--
-- Applies to a Supabase project (where the API roles already exist) and to a bare
-- PostgreSQL 15+ (where it creates them), and can be applied again without harm.
-- Run it in one transaction (`psql -1`, or the Supabase CLI's own).

-- The roles PostgREST switches between. Supabase creates them; a bare server does not.
-- `authenticator` is NOLOGIN here on purpose: whoever runs PostgREST locally gives it
-- LOGIN and a password, so no credential lives in this file.
do $$
begin
    if not exists (select from pg_catalog.pg_roles where rolname = 'anon') then
        create role anon nologin;
    end if;
    if not exists (select from pg_catalog.pg_roles where rolname = 'authenticated') then
        create role authenticated nologin;
    end if;
    if not exists (select from pg_catalog.pg_roles where rolname = 'service_role') then
        create role service_role nologin;
    end if;
    if not exists (select from pg_catalog.pg_roles where rolname = 'authenticator') then
        -- NOINHERIT: it may only act through SET ROLE, never with its members' rights.
        create role authenticator nologin noinherit;
    end if;
end
$$;

-- Granted only where missing: on Supabase the grants exist already and the migration's
-- user may lack the ADMIN OPTION that granting them again would need (PostgreSQL 16+).
do $$
declare
    api_role text;
begin
    foreach api_role in array array['anon', 'authenticated', 'service_role'] loop
        if not pg_catalog.pg_has_role('authenticator', api_role, 'member') then
            execute pg_catalog.format('grant %I to authenticator', api_role);
        end if;
    end loop;
end
$$;

create table if not exists public.sessions (
    id uuid primary key,
    created_at timestamptz not null,
    last_active_at timestamptz not null,
    concepts_generated bigint not null default 0
        constraint sessions_concepts_generated_nonnegative check (concepts_generated >= 0),
    concepts_refined bigint not null default 0
        constraint sessions_concepts_refined_nonnegative check (concepts_refined >= 0),
    concepts_stored bigint not null default 0
        constraint sessions_concepts_stored_nonnegative check (concepts_stored >= 0),
    preferences jsonb not null default '{}'
        constraint sessions_preferences_is_object check (jsonb_typeof(preferences) = 'object'),
    quota_state jsonb not null default '{}',
    -- The gateway's per-session write counter: the newest write wins, whatever the order
    -- in which write-behind batches arrive.
    version bigint not null,
    updated_at timestamptz not null default now()
);

-- Keeps the stored row when an update (an upsert's ON CONFLICT DO UPDATE included)
-- carries a version that is not newer. Returning NULL skips the update of that row
-- outright, so a stale retry writes nothing and leaves `updated_at` alone.
create or replace function public.sessions_version_guard()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
    if new.version <= old.version then
        return null;
    end if;
    new.updated_at := pg_catalog.now();
    return new;
end
$$;

drop trigger if exists sessions_version_guard on public.sessions;
create trigger sessions_version_guard
    before update on public.sessions
    for each row execute function public.sessions_version_guard();

-- Expiry sweeps scan by last activity; sync checks scan by last write.
create index if not exists sessions_last_active_at_idx on public.sessions (last_active_at);
create index if not exists sessions_updated_at_idx on public.sessions (updated_at);

-- Only the gateway (service_role) touches sessions. Supabase's default privileges grant
-- every new table in `public` to anon and authenticated, hence the explicit revoke.
revoke all on table public.sessions from public, anon, authenticated, service_role;
grant usage on schema public to service_role;
grant select, insert, update, delete on table public.sessions to service_role;

alter table public.sessions enable row level security;
drop policy if exists sessions_service_role_all on public.sessions;
create policy sessions_service_role_all on public.sessions
    for all to service_role using (true) with check (true);
