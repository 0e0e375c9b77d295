-- Plans (contract addendum 2): a session's quota tier is session state, written behind
-- with the rest and restored by read-through. One nullable column, `plan`: null is no plan
-- (the policies' own allowances).
--
-- Forward only, and safe to apply again. Run it in one transaction (`psql -1`), after 0001
-- to 0004, before the gateways that write `plan` roll out: a gateway of the previous
-- release sends no `plan`, and an upsert leaves the columns it does not send as they are.

alter table public.sessions
    add column if not exists plan text;

-- The gateway's own role (0003) writes the new column too: its grants are per column.
do $$
begin
    if exists (select from pg_catalog.pg_roles where rolname = 'sessiongate_gateway') then
        grant insert (plan), update (plan) on table public.sessions to sessiongate_gateway;
    end if;
end
$$;

-- PostgREST learns of the new column without a restart.
notify pgrst, 'reload schema';
