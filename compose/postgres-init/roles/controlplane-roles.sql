-- The two roles of the platform's database. Run by ../20-controlplane-roles.sh on the
-- volume's first start, and by tests/platform/audit/test_database_roles.py against a
-- throwaway database. psql variables: database, owner, app, owner_password, app_password.
--
-- owner: owns the schema and every table; only migrations log in with it (the `migrate`
--        service of compose.yaml).
-- app:   web and the control worker. It reads and writes rows and owns nothing: it cannot
--        DROP or ALTER a table, so it can neither drop nor disable the audit triggers, and
--        it has no TRUNCATE. The triggers refuse its UPDATE/DELETE of audit rows.
\set ON_ERROR_STOP on

CREATE ROLE :"owner" LOGIN PASSWORD :'owner_password' NOSUPERUSER NOCREATEDB NOCREATEROLE;
CREATE ROLE :"app" LOGIN PASSWORD :'app_password' NOSUPERUSER NOCREATEDB NOCREATEROLE;

ALTER DATABASE :"database" OWNER TO :"owner";
-- No CONNECT or TEMP for every role by default (MLflow's role has no business here).
REVOKE ALL ON DATABASE :"database" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"database" TO :"app";

\connect :"database"
ALTER SCHEMA public OWNER TO :"owner";
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO :"app";

-- Every table and sequence the owner creates from now on (each migration) is granted to
-- the app: rows only; no TRUNCATE, REFERENCES or TRIGGER.
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO :"app";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO :"app";
