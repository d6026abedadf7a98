-- Least privilege: one login role per processor, allowed to use its own
-- schema and nothing else (issue 9). The migrating role (the database
-- owner) keeps owning every table; `psymatch migrate` sets the roles'
-- passwords from PROCESSOR_DB_PASSWORD where the server asks for one.
-- Roles belong to the server, not to a database: a role made by another
-- database's migration (tests make many) is reused, and two migrations
-- creating the same role at once is not an error.
DO $$
DECLARE
    s    text;
    role text;
BEGIN
    FOREACH s IN ARRAY ARRAY['intake', 'scraper', 'geocoder', 'matcher', 'email_batcher',
                             'scheduler', 'registry', 'example']
    LOOP
        role := 'psymatch_' || s;
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = role) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I LOGIN', role);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;
            END;
        END IF;
        EXECUTE format('REVOKE ALL ON SCHEMA %I FROM PUBLIC', s);
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', s, role);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA %I TO %I',
                       s, role);
        EXECUTE format('GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA %I TO %I', s, role);
        -- Tables later migrations add to the schema.
        EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I
                        GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON TABLES TO %I', s, role);
        EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I
                        GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO %I', s, role);
        -- A processor checks at start that the database is migrated.
        EXECUTE format('GRANT SELECT ON public._sqlx_migrations TO %I', role);
    END LOOP;
END
$$;
