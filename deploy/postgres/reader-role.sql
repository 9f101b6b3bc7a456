-- Runs once, when the compose Postgres initialises its data directory (before any service runs
-- the migrations): the read-only role of migration 0011, here with a password, so that the
-- serving layer can log in as it (PLATFORM_SERVING__DATABASE_URL in docker-compose.yml).
-- Migration 0011 keeps an existing role and grants it SELECT. Change the password outside a
-- local demo.
CREATE ROLE lambda_reader LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT PASSWORD 'reader';
