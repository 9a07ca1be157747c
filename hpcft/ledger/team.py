"""The team ledger on PostgreSQL: roles, grants, row-level security and triggers that make the database itself
enforce hpcft.ledger.access, plus the administrator's operations (`hpcft admin ...`). Torch-free.

- Every Unix user reaches the database as the role of the same name (peer authentication on the socket; over TCP
  with their own password). `session_user` is that identity: it cannot be changed by an environment variable.
- The team console (`hpcft ui --team`, hpcft.web) connects as a console role (`hpcft admin console-role NAME`:
  a login role in `hpcft_consoles` and `hpcft_users`) and acts for one user per transaction
  (`SET LOCAL hpcft.acting_user`, Ledger.as_user). Every rule below reads the acting user from `hpcft_me()`:
  `session_user`, except for a console role, for which it is the user the transaction names (none: NULL, so no rows
  and no writes). Why this (option 2 of the design note) and not `SET ROLE` with policies on `current_user`: the
  SECURITY DEFINER helpers and guard triggers cannot see the caller's `current_user` (inside them it is the owner),
  so the user would have to be passed in as an argument that anyone calling the helper could forge; and the console
  would have to be made a member of every user's role. Here nobody but a console role, which only the ledger's owner
  creates, can name another user: an ordinary user's `SET hpcft.acting_user` or `SET ROLE` changes nothing.
- Role `hpcft_users` (every member of a project) may read the jobs and events the rules let it see and change
  those it may change; `hpcft_admins` also edits projects, settings and administrators.
- Policies (jobs): read if owner, administrator, or shared ro/rw with a project the user belongs to while sharing
  is on; insert only as oneself; update and delete if owner, administrator or shared rw. Events follow their job;
  a request event (kind `request`, what `hpcft admin apply` carries out) needs rw on its job and must name its
  inserter as its author (`by`). jobs.slurm_job_id is unique (migration 0006): no second row for a Slurm job.
  A trigger refuses a changed owner, an access changed by anyone but the owner (or an administrator), and an access
  more open than the parent job's.
"""

from __future__ import annotations

from typing import Dict, List

USERS_ROLE = "hpcft_users"
ADMINS_ROLE = "hpcft_admins"
CONSOLES_ROLE = "hpcft_consoles"

# Who is acting (see the module's docstring). A console names its user in `hpcft.acting_user` (SET LOCAL: for one
# transaction); the name counts only if it is a member of hpcft_users and not itself a console. Any other role's
# setting is never read. (pg_has_role counts a superuser as a console too; it bypasses row-level security anyway.)
_ME = r"""
CREATE OR REPLACE FUNCTION hpcft_me() RETURNS text LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
  SELECT CASE WHEN NOT pg_has_role(session_user, 'hpcft_consoles', 'MEMBER') THEN session_user::text
    WHEN octet_length(a) < 64 AND pg_has_role(to_regrole(quote_ident(a)), 'hpcft_users', 'MEMBER')
      AND NOT pg_has_role(to_regrole(quote_ident(a)), 'hpcft_consoles', 'MEMBER') THEN a END
  FROM nullif(current_setting('hpcft.acting_user', true), '') AS a $$;
"""

_FUNCTIONS = r"""
CREATE OR REPLACE FUNCTION hpcft_is_admin() RETURNS boolean LANGUAGE sql STABLE SECURITY DEFINER
  SET search_path = public AS $$ SELECT EXISTS (SELECT 1 FROM admins WHERE username = hpcft_me()) $$;
CREATE OR REPLACE FUNCTION hpcft_is_owner_role() RETURNS boolean LANGUAGE sql STABLE SECURITY DEFINER
  SET search_path = public AS $$
  SELECT session_user = (SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'public.jobs'::regclass) $$;
CREATE OR REPLACE FUNCTION hpcft_sharing_on() RETURNS boolean LANGUAGE sql STABLE SECURITY DEFINER
  SET search_path = public AS $$
  SELECT coalesce((SELECT value FROM settings WHERE key = 'sharing'), 'on') <> 'off' $$;
CREATE OR REPLACE FUNCTION hpcft_member(p text) RETURNS boolean LANGUAGE sql STABLE SECURITY DEFINER
  SET search_path = public AS $$
  SELECT EXISTS (SELECT 1 FROM project_members WHERE project = p AND username = hpcft_me()) $$;
CREATE OR REPLACE FUNCTION hpcft_can_read(o text, a text, p text) RETURNS boolean LANGUAGE sql STABLE
  SECURITY DEFINER SET search_path = public AS $$
  SELECT o = hpcft_me() OR hpcft_is_admin() OR (a IN ('ro', 'rw') AND hpcft_sharing_on() AND hpcft_member(p)) $$;
CREATE OR REPLACE FUNCTION hpcft_can_write(o text, a text, p text) RETURNS boolean LANGUAGE sql STABLE
  SECURITY DEFINER SET search_path = public AS $$
  SELECT o = hpcft_me() OR hpcft_is_admin() OR (a = 'rw' AND hpcft_sharing_on() AND hpcft_member(p)) $$;
CREATE OR REPLACE FUNCTION hpcft_job_readable(j integer) RETURNS boolean LANGUAGE sql STABLE SECURITY DEFINER
  SET search_path = public AS $$
  SELECT EXISTS (SELECT 1 FROM jobs WHERE id = j AND hpcft_can_read(owner, access, project)) $$;
CREATE OR REPLACE FUNCTION hpcft_job_writable(j integer) RETURNS boolean LANGUAGE sql STABLE SECURITY DEFINER
  SET search_path = public AS $$
  SELECT EXISTS (SELECT 1 FROM jobs WHERE id = j AND hpcft_can_write(owner, access, project)) $$;
CREATE OR REPLACE FUNCTION hpcft_request_ok(j integer, d text) RETURNS boolean LANGUAGE sql STABLE
  SECURITY DEFINER SET search_path = public AS $$
  SELECT hpcft_job_writable(j) AND coalesce(d::json ->> 'by', '') = hpcft_me() $$;
CREATE OR REPLACE FUNCTION hpcft_shared_projects() RETURNS SETOF text LANGUAGE sql STABLE SECURITY DEFINER
  SET search_path = public AS $$
  SELECT project FROM project_members WHERE username = hpcft_me() AND hpcft_sharing_on() $$;
CREATE OR REPLACE FUNCTION hpcft_access_rank(a text) RETURNS integer LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE a WHEN 'rw' THEN 2 WHEN 'ro' THEN 1 ELSE 0 END $$;
CREATE OR REPLACE FUNCTION hpcft_jobs_guard() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = public AS $$
DECLARE pa text;
BEGIN
  IF NEW.access NOT IN ('none', 'ro', 'rw') THEN
    RAISE EXCEPTION 'access=%: use none, ro or rw', NEW.access;
  END IF;
  IF TG_OP = 'UPDATE' AND NOT (hpcft_is_admin() OR hpcft_is_owner_role()) THEN
    IF NEW.owner <> OLD.owner THEN
      RAISE EXCEPTION 'job % (owner %): only an administrator may change its owner', OLD.id, OLD.owner;
    END IF;
    IF NEW.access <> OLD.access AND hpcft_me() IS DISTINCT FROM OLD.owner THEN
      RAISE EXCEPTION 'job % (owner %): only its owner may change its access', OLD.id, OLD.owner;
    END IF;
  END IF;
  IF NEW.parent_id IS NOT NULL AND (TG_OP = 'INSERT' OR NEW.access <> OLD.access) THEN
    SELECT access INTO pa FROM jobs WHERE id = NEW.parent_id;
    IF pa IS NOT NULL AND hpcft_access_rank(NEW.access) > hpcft_access_rank(pa) THEN
      RAISE EXCEPTION 'job %: access % is more open than its parent job % (%)', NEW.id, NEW.access,
        NEW.parent_id, pa;
    END IF;
  END IF;
  RETURN NEW;
END $$;
"""

# The jobs policies say hpcft_can_read / hpcft_can_write inline, each helper in `(SELECT ...)`: PostgreSQL then
# evaluates it once per statement (an InitPlan), not once per row through SECURITY DEFINER calls (10,000 jobs
# counted by a project member: 3 to 30 ms, against 0.7 to 3.9 s per row; README, "Team mode"). Events are visible
# when their job is: the EXISTS reads jobs under the caller's own policies.
_ME_SQL = "(SELECT hpcft_me())"
_JOB_READ = (f"owner = {_ME_SQL} OR (SELECT hpcft_is_admin()) OR (access IN ('ro', 'rw') "
             "AND project IN (SELECT hpcft_shared_projects()))")
_JOB_WRITE = (f"owner = {_ME_SQL} OR (SELECT hpcft_is_admin()) OR (access = 'rw' "
              "AND project IN (SELECT hpcft_shared_projects()))")

_POLICIES = f"""
ALTER TABLE jobs ENABLE ROW LEVEL SECURITY;
ALTER TABLE events ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS hpcft_jobs_read ON jobs;
DROP POLICY IF EXISTS hpcft_jobs_insert ON jobs;
DROP POLICY IF EXISTS hpcft_jobs_update ON jobs;
DROP POLICY IF EXISTS hpcft_jobs_delete ON jobs;
DROP POLICY IF EXISTS hpcft_events_read ON events;
DROP POLICY IF EXISTS hpcft_events_insert ON events;
DROP POLICY IF EXISTS hpcft_events_delete ON events;
CREATE POLICY hpcft_jobs_read ON jobs FOR SELECT TO {USERS_ROLE} USING ({_JOB_READ});
CREATE POLICY hpcft_jobs_insert ON jobs FOR INSERT TO {USERS_ROLE} WITH CHECK (owner = {_ME_SQL});
CREATE POLICY hpcft_jobs_update ON jobs FOR UPDATE TO {USERS_ROLE} USING ({_JOB_WRITE}) WITH CHECK ({_JOB_WRITE});
CREATE POLICY hpcft_jobs_delete ON jobs FOR DELETE TO {USERS_ROLE} USING ({_JOB_WRITE});
CREATE POLICY hpcft_events_read ON events FOR SELECT TO {USERS_ROLE}
  USING (EXISTS (SELECT 1 FROM jobs j WHERE j.id = job_id));
CREATE POLICY hpcft_events_insert ON events FOR INSERT TO {USERS_ROLE}
  WITH CHECK ((hpcft_job_writable(job_id) OR (kind = 'cloned' AND hpcft_job_readable(job_id)))
    AND (kind <> 'request' OR hpcft_request_ok(job_id, data::text)));
CREATE POLICY hpcft_events_delete ON events FOR DELETE TO {USERS_ROLE} USING (hpcft_job_writable(job_id));
DROP TRIGGER IF EXISTS hpcft_jobs_guard ON jobs;
CREATE TRIGGER hpcft_jobs_guard BEFORE INSERT OR UPDATE ON jobs FOR EACH ROW EXECUTE FUNCTION hpcft_jobs_guard();
GRANT USAGE ON SCHEMA public TO {USERS_ROLE};
GRANT SELECT, INSERT, UPDATE, DELETE ON jobs, events TO {USERS_ROLE};
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {USERS_ROLE};
GRANT SELECT ON projects, project_members, settings, admins, alembic_version TO {USERS_ROLE};
GRANT INSERT, UPDATE, DELETE ON projects, project_members, settings TO {ADMINS_ROLE};
GRANT {USERS_ROLE} TO {ADMINS_ROLE};
"""

# The small tables every member may read: nothing for a console role acting for nobody.
_REFERENCE = "".join(f"""
ALTER TABLE {t} ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS hpcft_acting ON {t};
CREATE POLICY hpcft_acting ON {t} TO {USERS_ROLE} USING (hpcft_me() IS NOT NULL);""" for t in (
    "projects", "project_members", "settings", "admins")) + "\n"

# The model registry (hpcft.registry, hpcft.ledger.assets): a version is seen by its owner, administrators and, while
# sharing is on, everyone (visibility all) or its project's members (project); only its owner or an administrator
# changes it. The trigger keeps a name with the user who first published it and refuses deleting a version a queued
# or running job starts from (config model.asset), naming the jobs, whoever owns them. Whoever may read a version
# may mark it corrupt (hpcft_asset_mark_corrupt: a job's submitter found its files damaged). An alias (model_aliases)
# is owned, seen and shared like the version it points to (its trigger copies owner, project and visibility from
# it, and only that version's owner or an administrator sets it).
_ASSETS = f"""
CREATE OR REPLACE FUNCTION hpcft_asset_readable(o text, v text, p text) RETURNS boolean LANGUAGE sql STABLE
  SECURITY DEFINER SET search_path = public AS $$
  SELECT hpcft_me() IS NOT NULL AND (o = hpcft_me() OR hpcft_is_admin()
    OR (hpcft_sharing_on() AND (v = 'all' OR (v = 'project' AND hpcft_member(p))))) $$;
CREATE OR REPLACE FUNCTION hpcft_asset_users(r text) RETURNS TABLE(job_id integer, owner text, state text)
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public AS $$
  SELECT j.id, j.owner, j.state FROM jobs j
   WHERE j.state IN ('queued', 'running') AND (j.config::jsonb -> 'model' ->> 'asset') = r
     AND EXISTS (SELECT 1 FROM model_assets a WHERE a.name || '@' || a.version = r
                 AND (a.owner = hpcft_me() OR hpcft_is_admin() OR hpcft_is_owner_role()))
   ORDER BY j.id $$;
CREATE OR REPLACE FUNCTION hpcft_assets_guard() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = public AS $$
DECLARE first_owner text; users text;
BEGIN
  IF NEW.visibility NOT IN ('project', 'all') THEN
    RAISE EXCEPTION 'visibility=%: use project or all', NEW.visibility;
  END IF;
  IF TG_OP = 'INSERT' THEN
    SELECT owner INTO first_owner FROM model_assets WHERE name = NEW.name ORDER BY version LIMIT 1;
    IF first_owner IS NOT NULL AND first_owner <> NEW.owner AND NOT (hpcft_is_admin() OR hpcft_is_owner_role()) THEN
      RAISE EXCEPTION 'model asset name % belongs to %', NEW.name, first_owner;
    END IF;
  ELSE
    IF NEW.owner <> OLD.owner AND NOT (hpcft_is_admin() OR hpcft_is_owner_role()) THEN
      RAISE EXCEPTION 'model asset %@% (owner %): only an administrator may change its owner', OLD.name,
        OLD.version, OLD.owner;
    END IF;
    IF NEW.state = 'deleted' AND OLD.state <> 'deleted' THEN
      SELECT string_agg('job ' || id || ' (' || owner || ', ' || state || ')', ', ' ORDER BY id) INTO users
        FROM jobs WHERE state IN ('queued', 'running')
         AND (config::jsonb -> 'model' ->> 'asset') = OLD.name || '@' || OLD.version;
      IF users IS NOT NULL THEN
        RAISE EXCEPTION 'model asset %@% is in use by %', OLD.name, OLD.version, users;
      END IF;
    END IF;
  END IF;
  RETURN NEW;
END $$;
ALTER TABLE model_assets ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS hpcft_assets_read ON model_assets;
DROP POLICY IF EXISTS hpcft_assets_insert ON model_assets;
DROP POLICY IF EXISTS hpcft_assets_update ON model_assets;
DROP POLICY IF EXISTS hpcft_assets_delete ON model_assets;
CREATE POLICY hpcft_assets_read ON model_assets FOR SELECT TO {USERS_ROLE}
  USING (hpcft_asset_readable(owner, visibility, project));
CREATE POLICY hpcft_assets_insert ON model_assets FOR INSERT TO {USERS_ROLE} WITH CHECK (owner = hpcft_me());
CREATE POLICY hpcft_assets_update ON model_assets FOR UPDATE TO {USERS_ROLE}
  USING (owner = hpcft_me() OR hpcft_is_admin()) WITH CHECK (owner = hpcft_me() OR hpcft_is_admin());
CREATE POLICY hpcft_assets_delete ON model_assets FOR DELETE TO {USERS_ROLE}
  USING (owner = hpcft_me() OR hpcft_is_admin());
DROP TRIGGER IF EXISTS hpcft_assets_guard ON model_assets;
CREATE TRIGGER hpcft_assets_guard BEFORE INSERT OR UPDATE ON model_assets FOR EACH ROW
  EXECUTE FUNCTION hpcft_assets_guard();
GRANT SELECT, INSERT, UPDATE, DELETE ON model_assets TO {USERS_ROLE};
CREATE OR REPLACE FUNCTION hpcft_asset_mark_corrupt(aid integer, why text) RETURNS boolean LANGUAGE plpgsql
  SECURITY DEFINER SET search_path = public AS $$
BEGIN
  UPDATE model_assets SET state = 'corrupt', state_reason = why, updated_at = now()
   WHERE id = aid AND state = 'published' AND hpcft_asset_readable(owner, visibility, project);
  RETURN FOUND;
END $$;
CREATE OR REPLACE FUNCTION hpcft_aliases_guard() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = public AS $$
DECLARE t model_assets%ROWTYPE;
BEGIN
  SELECT * INTO t FROM model_assets WHERE name = NEW.name AND version = NEW.version;
  IF NOT FOUND OR t.state <> 'published' THEN
    RAISE EXCEPTION 'model asset %@% is not a published version', NEW.name, NEW.version;
  END IF;
  IF t.owner IS DISTINCT FROM hpcft_me() AND NOT (hpcft_is_admin() OR hpcft_is_owner_role()) THEN
    RAISE EXCEPTION 'model asset %@% (owner %): only its owner or an administrator sets its aliases', NEW.name,
      NEW.version, t.owner;
  END IF;
  NEW.owner := t.owner; NEW.project := t.project; NEW.visibility := t.visibility;
  RETURN NEW;
END $$;
ALTER TABLE model_aliases ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS hpcft_aliases_read ON model_aliases;
DROP POLICY IF EXISTS hpcft_aliases_insert ON model_aliases;
DROP POLICY IF EXISTS hpcft_aliases_update ON model_aliases;
DROP POLICY IF EXISTS hpcft_aliases_delete ON model_aliases;
CREATE POLICY hpcft_aliases_read ON model_aliases FOR SELECT TO {USERS_ROLE}
  USING (hpcft_asset_readable(owner, visibility, project));
CREATE POLICY hpcft_aliases_insert ON model_aliases FOR INSERT TO {USERS_ROLE}
  WITH CHECK (owner = hpcft_me() OR hpcft_is_admin());
CREATE POLICY hpcft_aliases_update ON model_aliases FOR UPDATE TO {USERS_ROLE}
  USING (owner = hpcft_me() OR hpcft_is_admin()) WITH CHECK (owner = hpcft_me() OR hpcft_is_admin());
CREATE POLICY hpcft_aliases_delete ON model_aliases FOR DELETE TO {USERS_ROLE}
  USING (owner = hpcft_me() OR hpcft_is_admin());
DROP TRIGGER IF EXISTS hpcft_aliases_guard ON model_aliases;
CREATE TRIGGER hpcft_aliases_guard BEFORE INSERT OR UPDATE ON model_aliases FOR EACH ROW
  EXECUTE FUNCTION hpcft_aliases_guard();
GRANT SELECT, INSERT, UPDATE, DELETE ON model_aliases TO {USERS_ROLE};
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {USERS_ROLE};
"""


def _is_postgres(ledger) -> bool:
    return ledger.url.startswith(("postgresql", "postgres"))


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _run(ledger, sql: str) -> None:
    from sqlalchemy import text

    with ledger._writer.begin() as conn:
        conn.execute(text(sql))


def init(ledger) -> List[str]:
    """Create roles, grants, functions, policies and the trigger (idempotent; run by the database owner).
    Returns what it did, one line each. On SQLite and MariaDB there is nothing to create: hpcft enforces access."""
    from hpcft.errors import HpcftError

    if not _is_postgres(ledger):
        return [f"{ledger.url.split(':')[0]}: no row-level security here; hpcft enforces access itself "
                "(use PostgreSQL for a team ledger the database enforces)"]
    done = []
    with ledger._writer.connect() as conn:
        existing = set(conn.exec_driver_sql("SELECT rolname FROM pg_roles").scalars().all())
        owner = conn.exec_driver_sql("SELECT pg_get_userbyid(relowner) FROM pg_class "
                                     "WHERE oid = 'public.jobs'::regclass").scalar()
        me = conn.exec_driver_sql("SELECT session_user").scalar()
    if me != owner:
        raise HpcftError(f"hpcft admin init must run as the ledger's owner ({owner}), not {me}")
    for role in (USERS_ROLE, ADMINS_ROLE, CONSOLES_ROLE):
        if role not in existing:
            _run(ledger, f"CREATE ROLE {role} NOLOGIN")
            done.append(f"created role {role}")
    _run(ledger, _ME)
    _run(ledger, _FUNCTIONS)
    _run(ledger, _POLICIES)
    _run(ledger, _REFERENCE)
    done.append("row-level security on jobs and events: policies, guard trigger and grants in place")
    done.append(f"console roles ({CONSOLES_ROLE}, `hpcft admin console-role`) act only for the user a transaction "
                "names; alone they see no rows")
    _run(ledger, _ASSETS)
    done.append("row-level security on model_assets and model_aliases: visibility project|all, guard triggers and "
                "grants in place")
    return done


def ensure_user(ledger, username: str, admin: bool = False) -> None:
    """A login role for a Unix user (peer authentication), member of hpcft_users (and hpcft_admins)."""
    if not _is_postgres(ledger):
        return
    with ledger._writer.connect() as conn:
        exists = conn.exec_driver_sql("SELECT 1 FROM pg_roles WHERE rolname = %(n)s", {"n": username}).scalar()
    q = _quote_ident(username)
    if not exists:
        _run(ledger, f"CREATE ROLE {q} LOGIN")
    _run(ledger, f"GRANT {USERS_ROLE} TO {q}")
    if admin:
        _run(ledger, f"GRANT {ADMINS_ROLE} TO {q}")


def sync_projects(ledger, members: Dict[str, List[str]]) -> List[str]:
    """Projects = Slurm accounts: replace the ledger's membership with `members` and give every member a role."""
    ledger.set_projects(members)
    users = sorted({u for us in members.values() for u in us})
    for u in users:
        ensure_user(ledger, u)
    return [f"{p}: {', '.join(us)}" for p, us in sorted(members.items())]


def grant_admin(ledger, username: str, admin: bool = True) -> None:
    from hpcft.errors import HpcftError

    if admin and _is_postgres(ledger):
        with ledger._writer.connect() as conn:
            console = conn.exec_driver_sql(
                "SELECT 1 FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid "
                "JOIN pg_roles u ON u.oid = m.member WHERE g.rolname = %(c)s AND u.rolname = %(n)s",
                {"c": CONSOLES_ROLE, "n": username}).scalar()
        if console:
            raise HpcftError(f"grant {username}: a console role acts for the users it serves and is never an "
                             "administrator itself; grant the person instead")
    ledger.set_admin(username, admin)
    if admin:
        ensure_user(ledger, username, admin=True)
    elif _is_postgres(ledger):
        _run(ledger, f"REVOKE {ADMINS_ROLE} FROM {_quote_ident(username)}")


def console_role(ledger, name: str) -> str:
    """A login role for the team console's service (`hpcft admin console-role NAME`; run by the ledger's owner after
    `hpcft admin init`): member of hpcft_consoles (it may act for a user, one transaction at a time) and hpcft_users
    (the users' grants and policies); by itself it sees no rows. Peer authentication: a Unix user of that name."""
    from hpcft.errors import HpcftError

    if not _is_postgres(ledger):
        raise HpcftError(f"console-role {name}: team mode needs the PostgreSQL ledger (HPCFT_DB_URL=postgresql://...), "
                         f"not {ledger.url.split(':')[0]}")
    with ledger._writer.connect() as conn:
        ready = conn.exec_driver_sql("SELECT 1 FROM pg_roles WHERE rolname = %(c)s", {"c": CONSOLES_ROLE}).scalar()
        if not ready:
            raise HpcftError(f"console-role {name}: role {CONSOLES_ROLE} is missing; run `hpcft admin init` first")
        row = conn.exec_driver_sql("SELECT rolsuper OR (pg_has_role(oid, %(u)s, 'MEMBER') AND NOT "
                                   "pg_has_role(oid, %(c)s, 'MEMBER')) FROM pg_roles WHERE rolname = %(n)s",
                                   {"n": name, "u": USERS_ROLE, "c": CONSOLES_ROLE}).first()
    if row is not None and row[0]:
        raise HpcftError(f"console-role {name}: {name} is a superuser or a user of the ledger; give the console a "
                         "role of its own (e.g. hpcft-console)")
    q = _quote_ident(name)
    if row is None:
        _run(ledger, f"CREATE ROLE {q} LOGIN")
    _run(ledger, f"GRANT {CONSOLES_ROLE}, {USERS_ROLE} TO {q}")
    return f"{name}: console role (acts for the user each request names; alone it sees nothing)"
