"""Register the Microsoft ODBC Driver 18 from the ``mssql-python-odbc`` wheel with unixODBC, for the lab only.

Microsoft ODBC Driver 18 is not a Debian package; the PyPI wheel ``mssql-python-odbc`` ships
``libmsodbcsql-18.*.so`` (with its ``share/resources`` message file beside it). pyodbc goes through Debian's
unixODBC driver manager (``apt-get install unixodbc``), which finds drivers by name in ``odbcinst.ini``. Rather
than touch ``/etc/odbcinst.ini``, the lab writes its own under the state folder; clients use it through
``ODBCSYSINI`` / ``ODBCINSTINI``. unixODBC reads them once per process, at its first use (``pyodbc.connect``,
``pyodbc.drivers()``; importing pyodbc is fine): set them before that, or pass the library path as ``DRIVER=``.

Not handled: the wheel's musl (Alpine) and ARM64 builds are found by the same search but were never tried here.
"""
from __future__ import annotations

import os
import pathlib

from .config import LabPaths

DRIVER_NAME = "ODBC Driver 18 for SQL Server"
_DISTRO_DIRS = ("debian_ubuntu", "rhel", "suse", "alpine")


def driver_library() -> pathlib.Path:
    """Path of ``libmsodbcsql-18.*.so*`` inside the installed ``mssql-python-odbc`` wheel.

    Raises ``RuntimeError`` saying what to install when the wheel is missing.
    """
    try:
        import mssql_python_odbc
    except ImportError:
        raise RuntimeError("the ODBC driver comes from the PyPI wheel: pip install mssql-python-odbc") from None
    libs = pathlib.Path(mssql_python_odbc.get_libs_dir()) / "linux"
    distro = _distro_dir()
    pattern = "*/lib/libmsodbcsql-18*.so*"
    found = sorted(libs.glob(f"{distro}/{pattern}")) or sorted(libs.glob(f"*/{pattern}"))
    if not found:
        raise RuntimeError(f"no libmsodbcsql-18 below {libs} (is this a Linux build of mssql-python-odbc?)")
    return found[0]


def _distro_dir() -> str:
    """The wheel's folder for this Linux family, from ``/etc/os-release``."""
    try:
        text = pathlib.Path("/etc/os-release").read_text(encoding="utf-8").lower()
    except OSError:
        return _DISTRO_DIRS[0]
    for marker, folder in (("alpine", "alpine"), ("suse", "suse"), ("rhel", "rhel"), ("fedora", "rhel")):
        if marker in text:
            return folder
    return "debian_ubuntu"


def environment(paths: LabPaths) -> dict[str, str]:
    """The environment variables that make a client process use the lab's ``odbcinst.ini`` (``ODBCSYSINI``,
    ``ODBCINSTINI``); :func:`register_driver` writes that file."""
    return {"ODBCSYSINI": str(paths.root / "odbc"), "ODBCINSTINI": "odbcinst.ini"}


def register_driver(paths: LabPaths) -> dict[str, str]:
    """Write ``<state>/odbc/odbcinst.ini`` naming the wheel's driver ``ODBC Driver 18 for SQL Server``.

    Returns :func:`environment`. Idempotent: an unchanged file is not rewritten, and a changed one is replaced
    atomically, so processes that read it meanwhile (unixODBC, at their first ODBC call) never see it half written.
    """
    env = environment(paths)
    folder = pathlib.Path(env["ODBCSYSINI"])
    folder.mkdir(parents=True, exist_ok=True)
    ini = folder / env["ODBCINSTINI"]
    text = (f"[{DRIVER_NAME}]\nDescription=Microsoft ODBC Driver 18 for SQL Server (mssql-python-odbc wheel)\n"
            f"Driver={driver_library()}\nUsageCount=1\n")
    if not ini.exists() or ini.read_text(encoding="utf-8") != text:
        tmp = ini.with_name(f".{ini.name}.{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, ini)
    return env
