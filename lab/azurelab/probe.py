"""Lab-side evidence: ``python -m azurelab.probe password-login <server>``.

Tries the server administrator's real password through the PostgreSQL front, as a password-using client would, and
prints one JSON line: ``{"server", "password_login": "accepted" | "refused", "detail"}``. The password is read from the
lab's own secrets file and never printed; ``detail`` is the server's message. The migration's audit uses it to show
that a cutover really closed the password path (the collection itself never holds a database password).
"""
from __future__ import annotations

import json
import sys

import psycopg

from .config import paths, ports, topology
from .postgres import PostgresLab


def password_login(server: str) -> dict:
    lab = PostgresLab(paths(), topology())
    if server != lab.name:
        raise SystemExit(f"unknown server {server!r}; the lab has {lab.name!r}")
    try:
        with psycopg.connect(host="localhost", port=ports().postgres, dbname="postgres", user=lab.admin_login,
                             password=lab.admin_password(), sslmode="verify-full",
                             sslrootcert=str(paths().ca_bundle), connect_timeout=5) as conn:
            conn.execute("SELECT 1")
        return {"server": server, "password_login": "accepted", "detail": ""}
    except psycopg.OperationalError as exc:
        return {"server": server, "password_login": "refused", "detail": str(exc).strip().splitlines()[-1]}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "password-login":
        print("usage: python -m azurelab.probe password-login <server>", file=sys.stderr)
        return 2
    print(json.dumps(password_login(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
