"""Step 2.4 on a restored Bitrix24 box: the portal's settings, each a check plus a fix (the case's faults).

- portal domain in the main module's ``server_name`` and the site's ``b_lang.SERVER_NAME`` /
  ``b_lang_domain`` (notification links lacked a domain);
- push & pull server enabled in the pull module's ``b_option`` rows (attachments vanished);
- a search reindex queued when ``b_search_content`` is empty (the dump carries it empty);
- the Bitrix24.Network users, whose cloud passwords are not on the portal: they need a reset.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from connectors.box_host.post_restore import FixResult, Sql, domain_of

REINDEX_OPTION = "c2b_reindex_queued"


class PostRestoreSection(BaseModel):
    """``[post_restore]``: each fix of step 2.4 is a check plus a fix; switch any off here."""

    model_config = ConfigDict(extra="forbid")

    platform: Literal["bitrix24"] = Field(default="bitrix24", description="the platform these settings are for")
    domain: str = Field(default="", description="the portal's domain on the box (default: [migration] box_portal)")
    set_domain: bool = True
    enable_push_pull: bool = True
    queue_search_reindex: bool = True
    list_password_resets: bool = True
    pull_options: dict[str, str] = Field(default_factory=lambda: {"nginx": "Y", "push": "Y"},
                                         description="b_option values of the pull module that enable push & pull")
    network_auth_ids: list[str] = Field(default_factory=lambda: ["bitrix24"],
                                        description="b_user.EXTERNAL_AUTH_ID of Bitrix24.Network users")


def _q(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def option(sql: Sql, module: str, name: str) -> str | None:
    """The value of a portal-wide ``b_option`` row (None when the row is missing)."""
    rows = sql([f"SELECT VALUE FROM b_option WHERE MODULE_ID={_q(module)} AND NAME={_q(name)} AND SITE_ID IS NULL"])[0]
    return rows[0][0] if rows else None


def _set_option(module: str, name: str, value: str) -> str:
    return (f"DELETE FROM b_option WHERE MODULE_ID={_q(module)} AND NAME={_q(name)} AND SITE_ID IS NULL; "
            f"INSERT INTO b_option (MODULE_ID, NAME, VALUE) VALUES ({_q(module)}, {_q(name)}, {_q(value)})")


def fix_domain(sql: Sql, domain: str) -> FixResult:
    server_name = option(sql, "main", "server_name") or ""
    sites = sql(["SELECT LID, COALESCE(SERVER_NAME, '') FROM b_lang WHERE ACTIVE='Y' ORDER BY DEF DESC, SORT"])[0]
    domains = {r[0] for r in sql(["SELECT DOMAIN FROM b_lang_domain"])[0]}
    before = f"main.server_name={server_name!r}; sites " + ", ".join(f"{lid}={name!r}" for lid, name in sites)
    if server_name == domain and all(name == domain for _, name in sites) and domain in domains:
        return FixResult("portal domain", "ok", before)
    statements = [_set_option("main", "server_name", domain)]
    for lid, _ in sites:
        statements.append(f"UPDATE b_lang SET SERVER_NAME={_q(domain)} WHERE LID={_q(lid)}")
        statements.append(f"DELETE FROM b_lang_domain WHERE LID={_q(lid)} AND DOMAIN={_q(domain)}; "
                          f"INSERT INTO b_lang_domain (LID, DOMAIN) VALUES ({_q(lid)}, {_q(domain)})")
    sql(statements)
    after = option(sql, "main", "server_name")
    return FixResult("portal domain", "fixed", before, f"main.server_name={after!r}; {len(sites)} site(s) → {domain}")


def fix_push_pull(sql: Sql, options: dict[str, str]) -> FixResult:
    current = {name: option(sql, "pull", name) for name in options}
    before = ", ".join(f"pull.{k}={v!r}" for k, v in current.items())
    wrong = {k: v for k, v in options.items() if current[k] != v}
    if not wrong:
        return FixResult("push & pull server", "ok", before)
    sql([_set_option("pull", k, v) for k, v in wrong.items()])
    after = ", ".join(f"pull.{k}={option(sql, 'pull', k)!r}" for k in options)
    return FixResult("push & pull server", "fixed", before, after)


def queue_reindex(sql: Sql) -> FixResult:
    count = int(sql(["SELECT COUNT(*) FROM b_search_content"])[0][0][0])
    if count:
        return FixResult("search index", "ok", f"{count} indexed item(s)")
    if option(sql, "search", REINDEX_OPTION) == "Y":
        return FixResult("search index", "ok", "b_search_content is empty; a reindex is already queued",
                         "run Settings → Search → Reindex on the box")
    # the box rebuilds the index from its admin page (Settings → Search → Reindex) or an agent; we
    # leave a marker the contractor's checklist and the next run see, and say what to do
    sql([_set_option("search", REINDEX_OPTION, "Y")])
    return FixResult("search index", "fixed", "b_search_content is empty",
                     f"reindex queued (search.{REINDEX_OPTION}=Y): run Settings → Search → Reindex on the box")


def password_resets(sql: Sql, auth_ids: list[str]) -> FixResult:
    ids = ", ".join(_q(a) for a in auth_ids) or "''"
    rows = sql([f"SELECT ID, LOGIN, COALESCE(EMAIL, ''), COALESCE(EXTERNAL_AUTH_ID, '') FROM b_user "
                f"WHERE ACTIVE='Y' AND EXTERNAL_AUTH_ID IN ({ids}) ORDER BY ID"])[0]
    items = [{"id": int(r[0]), "login": r[1], "email": r[2], "auth": r[3]} for r in rows]
    status = "found" if items else "ok"
    return FixResult("password resets", status, f"{len(items)} Bitrix24.Network user(s) without a portal password",
                     "send them a password reset (their network passwords are not on the portal)" if items else "",
                     items)


def run_fixes(sql: Sql, settings: PostRestoreSection, *, domain: str) -> list[FixResult]:
    """Every enabled check/fix in the order of the runbook's step 2.4."""
    out: list[FixResult] = []
    if settings.set_domain:
        out.append(fix_domain(sql, domain_of(domain)))
    else:
        out.append(FixResult("portal domain", "skipped", "switched off"))
    out.append(fix_push_pull(sql, settings.pull_options) if settings.enable_push_pull
               else FixResult("push & pull server", "skipped", "switched off"))
    out.append(queue_reindex(sql) if settings.queue_search_reindex
               else FixResult("search index", "skipped", "switched off"))
    out.append(password_resets(sql, settings.network_auth_ids) if settings.list_password_resets
               else FixResult("password resets", "skipped", "switched off"))
    return out
