-- The role the serving layer answers HTTP requests through (`serving.database_url`): it may log
-- in and read every table, and write none. It has no password; an operator sets one with
-- `ALTER ROLE lambda_reader PASSWORD '...'` or admits it by the server's host rules.
--
-- Roles belong to the whole cluster, while this runs once per database, possibly in several
-- databases at once: an existing role is kept, and a concurrent creation is tolerated. When the
-- migrating role may not create roles, a notice says so and the operator creates the role and
-- runs the grants below by hand.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'lambda_reader') THEN
        BEGIN
            CREATE ROLE lambda_reader LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT;
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN NULL;
            WHEN insufficient_privilege THEN
                RAISE NOTICE 'cannot create role lambda_reader: %; create it and grant it SELECT as in 0011_reader_role.sql', SQLERRM;
                RETURN;
        END;
    END IF;
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO lambda_reader', current_database());
    GRANT USAGE ON SCHEMA public TO lambda_reader;
    GRANT SELECT ON ALL TABLES IN SCHEMA public TO lambda_reader;
    -- Tables created later by the migrating role (later migrations, a replay's swapped-in
    -- speed tables, built in another schema and moved here) are readable too.
    ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO lambda_reader;
END
$$;
