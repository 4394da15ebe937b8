-- Lab-only stand-in for Azure Database for PostgreSQL Flexible Server's pgaadauth functions.
--
-- Installed by the lab (as superuser postgres) in database "postgres", where Azure's documentation says to run
-- them. Re-running this file is safe. Azure keeps the role <-> Entra object mapping in a security label
-- (SECURITY LABEL FOR "pgaadauth" ON ROLE r IS 'aadauth,oid=<oid>,type=service'); a label needs a C label
-- provider that Debian's PostgreSQL does not ship, so the lab keeps the mapping in its own table, keyed by the
-- role's OID so that it follows ALTER ROLE ... RENAME and disappears from every read once the role is dropped
-- (roles are shared objects: event triggers never fire for DROP ROLE).
--
-- Sources: https://learn.microsoft.com/azure/postgresql/flexible-server/how-to-manage-azure-ad-users
-- and the error texts users report (MicrosoftDocs/azure-docs#102814, Azure/ARO-HCP#5833).
-- Not emulated: the directory look-up (a wrong object id or object type is accepted), group membership
-- expansion at login, MFA, the security label form, pgaadauth_create_principal by display name.

-- Owned by postgres, no privileges for anyone else: only the SECURITY DEFINER functions below reach it.
CREATE SCHEMA IF NOT EXISTS pgaadauth_lab;

-- Tenant of the server (authConfig.tenantId), written by the lab at setup.
CREATE TABLE IF NOT EXISTS pgaadauth_lab.server (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    tenant_id text NOT NULL
);

CREATE TABLE IF NOT EXISTS pgaadauth_lab.principals (
    role_oid oid PRIMARY KEY,
    object_id text NOT NULL,
    object_type text NOT NULL CHECK (object_type IN ('user', 'group', 'service')),
    tenant_id text NOT NULL,
    is_admin boolean NOT NULL,
    is_mfa boolean NOT NULL
);

-- Only principals whose role still exists: what every reader uses.
CREATE OR REPLACE VIEW pgaadauth_lab.live_principals AS
    SELECT r.rolname, p.object_id, p.object_type, p.tenant_id, p.is_admin, p.is_mfa
    FROM pgaadauth_lab.principals p JOIN pg_catalog.pg_roles r ON r.oid = p.role_oid;

-- Create a login role for an Entra object and record it. Internal: called by the public functions below after
-- their caller check, and by the lab itself for ARM's administrators/{objectId} PUT.
CREATE OR REPLACE FUNCTION pgaadauth_lab.create_role(rolename text, objectid text, objecttype text,
                                                     isadmin boolean, ismfa boolean)
RETURNS text LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    oid_norm text := lower(objectid);
    type_norm text := lower(objecttype);
    holder name;
    new_oid oid;
BEGIN
    IF rolename IS NULL OR rolename = '' THEN
        RAISE EXCEPTION 'role name must not be empty' USING ERRCODE = '22023';
    END IF;
    IF type_norm IS NULL OR type_norm NOT IN ('user', 'group', 'service') THEN
        RAISE EXCEPTION 'incorrect object type provided for principal, given object type: ''%''', objecttype
            USING ERRCODE = 'XX000', HINT = 'Use ''user'', ''group'' or ''service'' (managed identities and applications).';
    END IF;
    IF oid_norm IS NULL OR oid_norm !~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
        RAISE EXCEPTION 'invalid object id provided for principal: ''%''', objectid USING ERRCODE = '22023';
    END IF;
    -- Rows of dropped roles would otherwise block re-creating a principal for the same object id.
    DELETE FROM pgaadauth_lab.principals p WHERE NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.oid = p.role_oid);

    SELECT rolname INTO holder FROM pgaadauth_lab.live_principals WHERE object_id = oid_norm;
    IF FOUND THEN
        RAISE EXCEPTION 'Failed to create Microsoft Entra principal "%": object id % is already mapped to role "%"',
                        rolename, oid_norm, holder
            USING ERRCODE = 'XX000',
                  HINT = 'Updating an existing principal isn''t supported. Drop and recreate the Microsoft Entra principal.';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = rolename) THEN
        RAISE EXCEPTION 'role "%" already exists', rolename USING ERRCODE = '42710';
    END IF;

    EXECUTE format('CREATE ROLE %I LOGIN IN ROLE lab_entra_principal', rolename);
    IF isadmin THEN
        EXECUTE format('ALTER ROLE %I CREATEROLE CREATEDB', rolename);
        EXECUTE format('GRANT azure_pg_admin TO %I', rolename);
    END IF;
    SELECT oid INTO new_oid FROM pg_roles WHERE rolname = rolename;
    INSERT INTO pgaadauth_lab.principals (role_oid, object_id, object_type, tenant_id, is_admin, is_mfa)
        VALUES (new_oid, oid_norm, type_norm, (SELECT tenant_id FROM pgaadauth_lab.server),
                coalesce(isadmin, false), coalesce(ismfa, false));
    RETURN format('Created role for "%s"', rolename);
END $$;

-- Azure lets only Entra administrators create Entra principals. The check is on session_user: the login
-- identity, which SET ROLE cannot change.
CREATE OR REPLACE FUNCTION pgaadauth_lab.require_entra_admin() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pgaadauth_lab.live_principals WHERE rolname = session_user AND is_admin)
       OR NOT pg_has_role(session_user, 'azure_pg_admin', 'MEMBER') THEN
        RAISE EXCEPTION 'permission denied to manage Microsoft Entra principals: "%" is not a Microsoft Entra administrator',
                        session_user
            USING ERRCODE = '42501',
                  HINT = 'Connect to database postgres as a Microsoft Entra administrator of the server, with an access token as the password.';
    END IF;
END $$;

CREATE OR REPLACE FUNCTION public.pgaadauth_create_principal_with_oid(rolename text, objectid text, objecttype text,
                                                                      isadmin boolean, ismfa boolean)
RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pgaadauth_lab.require_entra_admin();
    RETURN pgaadauth_lab.create_role(rolename, objectid, objecttype, isadmin, ismfa);
END $$;

CREATE OR REPLACE FUNCTION public.pgaadauth_create_principal(rolename text, isadmin boolean, ismfa boolean)
RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pgaadauth_lab.require_entra_admin();
    RAISE EXCEPTION 'Could not create Microsoft Entra principal "%": the lab has no directory to look display names up in',
                    rolename
        USING ERRCODE = '0A000',
              HINT = 'Use pgaadauth_create_principal_with_oid(role, object_id, ''service''|''user''|''group'', is_admin, is_mfa).';
END $$;

CREATE OR REPLACE FUNCTION public.pgaadauth_list_principals(isadmin boolean)
RETURNS TABLE (rolname name, "principalType" text, "objectId" text, "tenantId" text, "isMfa" boolean,
               "isAdmin" boolean)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT rolname, object_type, object_id, tenant_id, is_mfa, is_admin
    FROM pgaadauth_lab.live_principals
    WHERE is_admin OR NOT isadmin
    ORDER BY rolname
$$;

REVOKE ALL ON FUNCTION public.pgaadauth_create_principal_with_oid(text, text, text, boolean, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.pgaadauth_create_principal(text, boolean, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.pgaadauth_list_principals(boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.pgaadauth_create_principal_with_oid(text, text, text, boolean, boolean) TO azure_pg_admin;
GRANT EXECUTE ON FUNCTION public.pgaadauth_create_principal(text, boolean, boolean) TO azure_pg_admin;
GRANT EXECUTE ON FUNCTION public.pgaadauth_list_principals(boolean) TO azure_pg_admin;
