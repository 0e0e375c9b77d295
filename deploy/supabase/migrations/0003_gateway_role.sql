-- A database role for the gateway alone, narrower than `service_role`: read one session
-- row (read-through), insert and update session rows (the write-behind upsert,
-- `POST /sessions?on_conflict=id` with `resolution=merge-duplicates`), nothing else. No
-- DELETE: the gateway never deletes a row. No other table, view or schema. Dead letters stay
-- in Redis (`sg:dead-letter`), not here.
--
-- Optional: a gateway keeps working with the `service_role` key. To use this role, sign a
-- JWT with the claim `"role": "sessiongate_gateway"` with the project's JWT secret and give
-- it to the gateway as SUPABASE_SERVICE_ROLE_KEY (deploy/README.md, "A database role of the
-- gateway's own"). Only for gateways that write `usage` (0002): a gateway of an earlier
-- release writes the old counter columns, which this role may not.
--
-- Safe to apply again. Run it in one transaction (`psql -1`), after 0001 and 0002.

-- NOLOGIN: only PostgREST's `authenticator` becomes it (SET ROLE), as with the API roles.
do $$
begin
    if not exists (select from pg_catalog.pg_roles where rolname = 'sessiongate_gateway') then
        create role sessiongate_gateway nologin noinherit;
    end if;
end
$$;

-- Granted only where missing, as in 0001.
do $$
begin
    if not pg_catalog.pg_has_role('authenticator', 'sessiongate_gateway', 'member') then
        grant sessiongate_gateway to authenticator;
    end if;
end
$$;

-- Exactly what the gateway's requests need. SELECT on every column: a read asks for the
-- whole row, and the upsert's ON CONFLICT reads `id`. INSERT and UPDATE only on the columns
-- a row of the gateway carries (src/flush/row.rs); the upsert updates every column it
-- inserts, `id` included. `updated_at` is the version guard's, and the v1 counter columns
-- are no longer written. A later migration that adds a column the gateway writes grants it
-- here too. Revoked first, so applying this again leaves exactly these privileges.
revoke all on table public.sessions from sessiongate_gateway;
grant usage on schema public to sessiongate_gateway;
grant select on table public.sessions to sessiongate_gateway;
grant insert (id, created_at, last_active_at, usage, preferences, quota_state, version)
    on table public.sessions to sessiongate_gateway;
grant update (id, created_at, last_active_at, usage, preferences, quota_state, version)
    on table public.sessions to sessiongate_gateway;

-- Row level security is on (0001): one policy per verb the role has; none for DELETE.
drop policy if exists sessions_gateway_select on public.sessions;
create policy sessions_gateway_select on public.sessions
    for select to sessiongate_gateway using (true);
drop policy if exists sessions_gateway_insert on public.sessions;
create policy sessions_gateway_insert on public.sessions
    for insert to sessiongate_gateway with check (true);
drop policy if exists sessions_gateway_update on public.sessions;
create policy sessions_gateway_update on public.sessions
    for update to sessiongate_gateway using (true) with check (true);

-- PostgREST learns of the new role's privileges without a restart.
notify pgrst, 'reload schema';
