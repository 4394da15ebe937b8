"""The T-SQL dialect of the Azure SQL double: tokens, a parser for its statement subset, SELECT rewritten for SQLite.

Statements (a name is ``[bracketed]`` with ``]]`` for ``]``, ``"quoted"`` or regular; names compare as under the
default collation, see sqlcatalog.py; at most 128 characters):

* ``CREATE USER n WITH SID = 0x<hex>, TYPE = E | X [, DEFAULT_SCHEMA = s]`` - a binary literal only;
* ``CREATE USER n FROM EXTERNAL PROVIDER [WITH OBJECT_ID = '<guid>'] [, DEFAULT_SCHEMA = s]`` - looked up with the
  server's ``resolve_principal``; needs an Entra session (33159) and, for an app or managed identity caller,
  ``directory_readers()`` (33134);
* ``CREATE USER n WITH PASSWORD = '<pw>' [, DEFAULT_SCHEMA = s]`` (contained user), ``CREATE USER n WITHOUT LOGIN``;
  ``CREATE USER n`` and ``... FOR|FROM LOGIN l`` answer 15007 (logins in master are not emulated);
* ``DROP USER [IF EXISTS] n``, ``CREATE ROLE r [AUTHORIZATION o]``, ``DROP ROLE [IF EXISTS] r``,
  ``ALTER ROLE r ADD MEMBER n`` / ``DROP MEMBER n``;
* ``SELECT`` (and ``WITH ... SELECT``): lists of the niladic values (``CURRENT_USER``, ``SUSER_SID()``,
  ``@@VERSION``, literals, ...) are answered directly (sqlsession.py); any other SELECT runs in SQLite over
  ``sys.database_principals``, ``sys.database_role_members``, ``sys.databases`` and ``sys.dm_exec_sessions`` (WHERE,
  JOIN, ORDER BY, GROUP BY, COUNT(*), EXISTS, IN, CASE, ... as SQLite runs them), after these rewrites: ``N'..'``
  literals, ``[names]``, ``0x..`` binaries, ``@P1``/``@name`` parameters and ``?`` bound, the niladic values bound,
  ``TOP (n)`` -> ``LIMIT``, ``ISNULL`` -> ``IFNULL``, ``LEN``, ``COUNT_BIG``, ``USER_NAME(id)``, ``USER_ID(n)``,
  ``DATABASE_PRINCIPAL_ID(n)``, ``DB_NAME(id)``, ``DB_ID(n)``, ``IS_ROLEMEMBER(r [, n])``, ``CAST``/``CONVERT`` to
  character types, integers, ``bit``, ``varbinary``/``binary`` and ``uniqueidentifier`` (a GUID string becomes SQL
  Server's 16 bytes, so ``CAST(CAST('<guid>' AS uniqueidentifier) AS varbinary(16))`` equals an Entra SID),
  ``CONVERT(varchar, <binary>, 1|2)`` (hex text);
* ``BEGIN TRAN[SACTION]``, ``COMMIT``/``ROLLBACK`` [``TRAN[SACTION]`` | ``WORK``] [name], ``SET XACT_ABORT ON|OFF``,
  ``SET NOCOUNT ON|OFF``, and ``SET ANSI_*``/``QUOTED_IDENTIFIER``/``ARITHABORT``/``CONCAT_NULL_YIELDS_NULL``/
  ``TEXTSIZE``/``LOCK_TIMEOUT``/``DEADLOCK_PRIORITY``/``TRANSACTION ISOLATION LEVEL`` accepted with no effect;
* ``EXEC name`` (or a name alone as the first statement): 2812.

Not emulated: ``ALTER USER``, logins and ``CREATE LOGIN``, GRANT/DENY/REVOKE, variables (``DECLARE``), control flow
(``IF``, ``BEGIN ... END``), ``SAVE TRAN``, temporary tables, any table of user data, ``INSERT``/``UPDATE``/
``DELETE``, ``USE``, ``TOP`` in subqueries, ``+`` as string concatenation, ``col = expr`` aliases, three-part names,
``/* */`` comments left open; all are answered 102 "Incorrect syntax near ..." (and logged).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Protocol

from . import sqlcatalog
from .sqlcatalog import SqlError

MAX_NAME = 128
DB_OWNER = 16384


# --- tokens ----------------------------------------------------------------------------------------------------
_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<comment>--[^\n]*|/\*.*?\*/)
  | (?P<nstring>[Nn]'(?:[^']|'')*')
  | (?P<string>'(?:[^']|'')*')
  | (?P<bracket>\[(?:[^\]]|\]\])*\])
  | (?P<dquote>"(?:[^"]|"")*")
  | (?P<binary>0[xX][0-9A-Fa-f]*)
  | (?P<number>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<sysvar>@@[^\W\d]\w*)
  | (?P<variable>@[\w@$#]+)
  | (?P<word>[^\W\d][\w@$#]*|\#[\w@$#]*)
  | (?P<op><>|!=|<=|>=|!<|!>|[-+*/%=<>(),.;~&|^?])
""", re.S | re.X)


@dataclasses.dataclass(frozen=True)
class Token:
    """``kind``: word, name (a quoted identifier), string, nstring, binary, number, variable, sysvar or op."""

    kind: str
    text: str  # as written
    value: object  # the identifier, the string's value, the bytes, the number
    start: int

    @property
    def end(self) -> int:
        return self.start + len(self.text)

    def is_word(self, *words: str) -> bool:
        return self.kind == "word" and self.text.upper() in words


def tokenize(text: str) -> list[Token]:
    """The tokens of a batch without whitespace and comments; raises 105 on an unclosed quotation mark."""
    tokens, pos = [], 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            if text[pos] in "'[\"" or text[pos:pos + 2].upper() == "N'":
                rest = text[pos + (2 if text[pos] in "Nn" else 1):]
                raise SqlError(105, f"Unclosed quotation mark after the character string '{rest}'.", severity=15)
            raise SqlError(102, f"Incorrect syntax near '{text[pos]}'.", severity=15)
        kind, raw = match.lastgroup, match.group()
        pos = match.end()
        if kind in ("ws", "comment"):
            continue
        value: object = raw
        if kind == "nstring":
            value = raw[2:-1].replace("''", "'")
        elif kind == "string":
            value = raw[1:-1].replace("''", "'")
        elif kind == "bracket":
            kind, value = "name", raw[1:-1].replace("]]", "]")
        elif kind == "dquote":
            kind, value = "name", raw[1:-1].replace('""', '"')
        elif kind == "binary":
            digits = raw[2:]
            value = bytes.fromhex(digits if len(digits) % 2 == 0 else "0" + digits)
        tokens.append(Token(kind, raw, value, match.start()))
    return tokens


# --- statements --------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Statement:
    """One parsed statement: ``kind`` and its parts; ``tokens`` for SELECT; ``text`` for the log."""

    kind: str
    text: str
    name: str = ""
    options: dict = dataclasses.field(default_factory=dict)
    tokens: list = dataclasses.field(default_factory=list)


_STARTERS = {"SELECT", "CREATE", "DROP", "ALTER", "BEGIN", "COMMIT", "ROLLBACK", "SET", "EXEC", "EXECUTE", "DECLARE",
             "PRINT", "IF", "WHILE", "INSERT", "UPDATE", "DELETE", "MERGE", "GRANT", "REVOKE", "DENY", "USE",
             "RETURN", "TRUNCATE", "WAITFOR", "RAISERROR", "THROW", "SAVE", "WITH", "GO"}
_HARMLESS_SET = {"ANSI_NULLS", "ANSI_PADDING", "ANSI_WARNINGS", "ANSI_NULL_DFLT_ON", "QUOTED_IDENTIFIER",
                 "ARITHABORT", "CONCAT_NULL_YIELDS_NULL", "TEXTSIZE", "LOCK_TIMEOUT", "DEADLOCK_PRIORITY",
                 "IMPLICIT_TRANSACTIONS", "NUMERIC_ROUNDABORT", "DATEFORMAT", "DATEFIRST", "TRANSACTION", "LANGUAGE"}


class NotEmulated(Exception):
    """A statement outside the subset: answered 102 near ``near`` and logged with ``reason``."""

    def __init__(self, near: str, reason: str):
        super().__init__(reason)
        self.near, self.reason = near, reason


class Parser:
    """Recursive descent over one batch's tokens; :meth:`batch` returns the statements or raises."""

    def __init__(self, text: str):
        self.text = text
        self.tokens = tokenize(text)
        self.pos = 0

    # --- token helpers
    def peek(self, offset: int = 0) -> Token | None:
        index = self.pos + offset
        return self.tokens[index] if index < len(self.tokens) else None

    def next(self) -> Token:
        token = self.peek()
        if token is None:
            raise self.syntax_error()
        self.pos += 1
        return token

    def accept(self, *words: str) -> bool:
        token = self.peek()
        if token is not None and token.is_word(*words):
            self.pos += 1
            return True
        return False

    def expect(self, *words: str) -> None:
        if not self.accept(*words):
            raise self.syntax_error()

    def accept_op(self, op: str) -> bool:
        token = self.peek()
        if token is not None and token.kind == "op" and token.text == op:
            self.pos += 1
            return True
        return False

    def expect_op(self, op: str) -> None:
        if not self.accept_op(op):
            raise self.syntax_error()

    def syntax_error(self) -> SqlError:
        token = self.peek() or (self.tokens[-1] if self.tokens else None)
        return SqlError(102, f"Incorrect syntax near '{token.text if token else ''}'.", severity=15)

    def name(self) -> str:
        """An identifier: quoted, or a regular one that is not a keyword of the statement grammar."""
        token = self.peek()
        if token is None or token.kind not in ("word", "name") or (
                token.kind == "word" and token.text.upper() in _RESERVED):
            raise self.syntax_error()
        self.pos += 1
        name = str(token.value)
        if len(name) > MAX_NAME:
            raise SqlError(103, f"The identifier that starts with '{name[:MAX_NAME]}' is too long. Maximum length "
                                f"is {MAX_NAME}.", severity=15)
        return name

    def string(self) -> str:
        token = self.next()
        if token.kind not in ("string", "nstring"):
            self.pos -= 1
            raise self.syntax_error()
        return str(token.value)

    def statement_text(self, first: int) -> str:
        last = self.tokens[self.pos - 1]
        return self.text[self.tokens[first].start:last.end]

    # --- grammar
    def batch(self) -> list[Statement]:
        statements = []
        while self.peek() is not None:
            if self.accept_op(";"):
                continue
            first = self.pos
            statement = self.statement(first_in_batch=not statements)
            statement.text = self.statement_text(first)
            statements.append(statement)
            token = self.peek()
            if token is not None and not (token.kind == "op" and token.text == ";") and not (
                    token.kind == "word" and token.text.upper() in _STARTERS):
                raise self.syntax_error()
        return statements

    def statement(self, first_in_batch: bool) -> Statement:
        token = self.next()
        keyword = token.text.upper() if token.kind == "word" else ""
        handler = {"SELECT": self.select, "WITH": self.select, "CREATE": self.create, "DROP": self.drop, "ALTER": self.alter,
                   "BEGIN": self.begin, "COMMIT": self.commit, "ROLLBACK": self.commit, "SET": self.set_option,
                   "EXEC": self.execute, "EXECUTE": self.execute}.get(keyword)
        if handler is not None:
            self.pos -= 1
            return handler()
        if first_in_batch and token.kind in ("word", "name") and keyword not in _STARTERS:
            self.pos -= 1  # a procedure name alone: EXEC it
            return self.procedure_call()
        following = self.peek()
        raise NotEmulated(following.text if following else token.text, f"statement {token.text!r}")

    def select(self) -> Statement:
        """SELECT, or ``WITH name [(columns)] AS (query) [, ...] SELECT ...``, up to ``;`` or the next statement."""
        first = self.pos
        common_table = self.accept("WITH")
        if not common_table:
            self.expect("SELECT")
        depth = 0
        while (token := self.peek()) is not None:
            if token.kind == "op" and token.text == "(":
                depth += 1
            elif token.kind == "op" and token.text == ")":
                depth -= 1
                if depth < 0:
                    raise self.syntax_error()
            elif depth == 0 and token.kind == "op" and token.text == ";":
                break
            elif depth == 0 and token.kind == "word" and token.text.upper() in _STARTERS:
                previous = self.tokens[self.pos - 1]
                continues = previous.is_word("UNION", "ALL", "EXCEPT", "INTERSECT") or (
                    common_table and previous.text == ")")  # the query after a common table expression
                if not (token.text.upper() == "SELECT" and continues):
                    break
                common_table = False
            self.pos += 1
        if depth:
            raise self.syntax_error()
        return Statement("select", "", tokens=self.tokens[first:self.pos])

    def create(self) -> Statement:
        self.expect("CREATE")
        if self.accept("ROLE"):
            name = self.name()
            owner = self.name() if self.accept("AUTHORIZATION") else None
            return Statement("create_role", "", name, {"owner": owner})
        if not self.accept("USER"):
            following = self.peek()
            raise NotEmulated(following.text if following else "CREATE", "CREATE of something other than a user or role")
        name = self.name()
        options: dict = {}
        if self.accept("FROM"):
            if self.accept("LOGIN"):
                options["login"] = self.name()
            else:
                self.expect("EXTERNAL")
                self.expect("PROVIDER")
                options["external"] = True
        elif self.accept("FOR"):
            self.expect("LOGIN")
            options["login"] = self.name()
        elif self.accept("WITHOUT"):
            self.expect("LOGIN")
            options["without_login"] = True
        if self.accept("WITH"):
            self.user_options(options)
        return Statement("create_user", "", name, options)

    def user_options(self, options: dict) -> None:
        """``option = value [, ...]`` after WITH, as CREATE USER allows them."""
        while True:
            option = self.next()
            if not option.is_word("SID", "TYPE", "PASSWORD", "DEFAULT_SCHEMA", "OBJECT_ID") or \
                    option.text.lower() in options:
                self.pos -= 1
                raise self.syntax_error()
            self.expect_op("=")
            key = option.text.lower()
            if key == "sid":
                value = self.next()
                if value.kind != "binary":
                    self.pos -= 1
                    raise self.syntax_error()  # SQL Server takes a literal only, not an expression
                options[key] = value.value
            elif key == "type":
                value = self.next()
                if not value.is_word("E", "X"):
                    self.pos -= 1
                    raise self.syntax_error()
                options[key] = value.text.upper()
            elif key in ("password", "object_id"):
                options[key] = self.string()
            else:
                options[key] = self.name()
            if not self.accept_op(","):
                return

    def drop(self) -> Statement:
        self.expect("DROP")
        if not (token := self.peek()) or not token.is_word("USER", "ROLE"):
            raise NotEmulated(token.text if token else "DROP", "DROP of something other than a user or role")
        kind = "drop_user" if self.next().is_word("USER") else "drop_role"
        if_exists = False
        if self.accept("IF"):
            self.expect("EXISTS")
            if_exists = True
        return Statement(kind, "", self.name(), {"if_exists": if_exists})

    def alter(self) -> Statement:
        self.expect("ALTER")
        if not self.accept("ROLE"):
            token = self.peek()
            raise NotEmulated(token.text if token else "ALTER", "ALTER of something other than a role")
        role = self.name()
        if self.accept("ADD"):
            action = "add"
        elif self.accept("DROP"):
            action = "drop"
        else:
            token = self.peek()
            raise NotEmulated(token.text if token else role, "ALTER ROLE other than ADD/DROP MEMBER")
        self.expect("MEMBER")
        return Statement("alter_role", "", role, {"action": action, "member": self.name()})

    def begin(self) -> Statement:
        self.expect("BEGIN")
        if not self.accept("TRAN", "TRANSACTION"):
            token = self.peek()
            raise NotEmulated(token.text if token else "BEGIN", "BEGIN ... END blocks")
        self.transaction_name()
        return Statement("begin", "")

    def commit(self) -> Statement:
        kind = "commit" if self.next().is_word("COMMIT") else "rollback"
        if not self.accept("WORK") and self.accept("TRAN", "TRANSACTION"):
            self.transaction_name()
        return Statement(kind, "")

    def transaction_name(self) -> None:
        token = self.peek()
        if token is not None and (token.kind == "name" or (token.kind == "word" and token.text.upper() not in
                                                           _STARTERS)):
            self.pos += 1

    def set_option(self) -> Statement:
        self.expect("SET")
        option = self.next()
        name = option.text.upper()
        if name in ("XACT_ABORT", "NOCOUNT"):
            value = self.next()
            if not value.is_word("ON", "OFF"):
                self.pos -= 1
                raise self.syntax_error()
            return Statement("set", "", name, {"on": value.is_word("ON")})
        if option.kind == "word" and name in _HARMLESS_SET:
            while (token := self.peek()) is not None and not (token.kind == "op" and token.text == ";") and not (
                    token.kind == "word" and token.text.upper() in _STARTERS):
                self.pos += 1
            return Statement("set", "", name, {"ignored": True})
        raise NotEmulated(option.text, f"SET {option.text}")

    def execute(self) -> Statement:
        self.expect("EXEC", "EXECUTE")
        return self.procedure_call()

    def procedure_call(self) -> Statement:
        parts = [self.name()]
        while self.accept_op("."):
            parts.append(self.name())
        while (token := self.peek()) is not None and not (token.kind == "op" and token.text == ";") and not (
                token.kind == "word" and token.text.upper() in _STARTERS):
            self.pos += 1  # arguments: the procedure does not exist anyway
        return Statement("exec", "", parts[-1])


# T-SQL reserved keywords a regular identifier cannot be (the ones this grammar meets)
_RESERVED = (_STARTERS - {"GO", "THROW"}) | {"FROM", "FOR", "TO", "ADD", "AUTHORIZATION", "USER", "EXTERNAL", "EXISTS",
                                             "WHERE", "AND", "OR", "NOT", "NULL"}


# --- SELECT in SQLite ----------------------------------------------------------------------------------------------
_NILADIC = {"CURRENT_USER", "SESSION_USER", "SYSTEM_USER", "USER"}
_NO_ARGUMENT = {"USER_NAME", "SUSER_SNAME", "SUSER_NAME", "SUSER_SID", "DB_NAME", "DB_ID", "ORIGINAL_LOGIN",
                "USER_ID", "DATABASE_PRINCIPAL_ID"}
_RENAMED = {"ISNULL": "IFNULL", "COUNT_BIG": "COUNT", "LEN": "tsql_len"}
_CHAR_TYPES = {"NVARCHAR", "VARCHAR", "NCHAR", "CHAR", "SYSNAME", "NTEXT", "TEXT"}
_INT_TYPES = {"INT", "BIGINT", "SMALLINT", "TINYINT"}
# select-list items whose last word is one of these are not aliases
_NOT_ALIASES = _NILADIC | {"END", "NULL", "DISTINCT", "ALL", "ASC", "DESC"}


class SessionValues(Protocol):
    """What a translation asks the session: the niladic functions' and the @@ variables' values."""

    def user_value(self, name: str) -> object:
        """CURRENT_USER, SUSER_SID, DB_NAME, ... (upper case, without parentheses)."""

    def system_value(self, name: str) -> object:
        """@@VERSION, @@SPID, ...; raises SqlError 137 for an unknown one."""


class Translation:
    """A T-SQL SELECT turned into SQLite text plus its bound values and SQL Server's column names."""

    def __init__(self, session: SessionValues, tokens: list[Token], params: dict[str, object]):
        self.session, self.tokens, self.params = session, tokens, params
        self.values: list[object] = []
        self.positional = 0

    def bind(self, value: object) -> str:
        """A numbered SQLite parameter (``?N``): rewrites may place values out of their order of binding."""
        self.values.append(value)
        return f"?{len(self.values)}"

    def sql(self) -> str:
        tokens, limit = self._top(self.tokens)
        text = self._span(tokens, 0, len(tokens))
        return f"{text} LIMIT {limit}" if limit is not None else text

    def _top(self, tokens: list[Token]) -> tuple[list[Token], str | None]:
        """``SELECT [DISTINCT] TOP (n) | TOP n`` -> the tokens without it and the LIMIT."""
        if not tokens[0].is_word("SELECT"):
            return tokens, None
        at = 2 if len(tokens) > 1 and tokens[1].is_word("DISTINCT") else 1
        if len(tokens) <= at or not tokens[at].is_word("TOP"):
            return tokens, None
        if at + 1 < len(tokens) and tokens[at + 1].text == "(":
            close = _matching(tokens, at + 1)
            limit = self._span(tokens, at + 2, close)
            return tokens[:at] + tokens[close + 1:], limit
        if at + 1 < len(tokens) and tokens[at + 1].kind in ("number", "variable"):
            return tokens[:at] + tokens[at + 2:], self._span(tokens, at + 1, at + 2)
        raise SqlError(102, f"Incorrect syntax near '{tokens[at].text}'.", severity=15)

    def _span(self, tokens: list[Token], start: int, stop: int) -> str:
        out, i = [], start
        while i < stop:
            token = tokens[i]
            following = tokens[i + 1] if i + 1 < stop else None
            upper = token.text.upper()
            if token.kind == "word" and following is not None and following.text == "(":
                close = _matching(tokens, i + 1)
                out.append(self._function(upper, token, tokens, i + 2, close))
                i = close + 1
                continue
            if token.kind in ("word", "name") and str(token.value).lower() == "sys" and following is not None \
                    and following.text == "." and i + 2 < stop and tokens[i + 2].kind in ("word", "name"):
                view = str(tokens[i + 2].value).lower()
                out.append(f"temp.sys_{view}" if view in sqlcatalog.VIEWS else _quote(f"sys.{tokens[i + 2].value}"))
                i += 3
                continue
            out.append(self._token(token, upper))
            i += 1
        return " ".join(out)

    def _token(self, token: Token, upper: str) -> str:
        if token.kind in ("string", "nstring"):
            return "'" + str(token.value).replace("'", "''") + "'"
        if token.kind == "name":
            return _quote(str(token.value))
        if token.kind == "binary":
            return f"X'{token.value.hex()}'"
        if token.kind == "variable":
            key = token.text.lower()
            if key not in self.params:
                raise SqlError(137, f'Must declare the scalar variable "{token.text}".', severity=15, state=2)
            return self.bind(self.params[key])
        if token.kind == "sysvar":
            return self.bind(self.session.system_value(token.text))
        if token.kind == "op" and token.text == "?":
            values = list(self.params.values())
            if self.positional >= len(values):
                raise SqlError(8178, "The parameterized query expects a parameter, which was not supplied.")
            self.positional += 1
            return self.bind(values[self.positional - 1])
        if token.kind == "word" and upper in _NILADIC:
            return self.bind(self.session.user_value(upper))
        return token.text

    def _function(self, upper: str, token: Token, tokens: list[Token], start: int, close: int) -> str:
        """A function call ``upper(tokens[start:close])``."""
        if start == close and upper in _NO_ARGUMENT:
            return self.bind(self.session.user_value(upper))
        if upper in ("CAST", "TRY_CAST"):
            return self._cast(tokens, start, close)
        args = _split_arguments(tokens, start, close)
        if upper in ("CONVERT", "TRY_CONVERT") and len(args) >= 2:
            kind = tokens[args[0][0]].text.upper()
            style = self._span(tokens, *args[2]) if len(args) > 2 else None
            return _convert(kind, self._span(tokens, *args[1]), style)
        arg = [self._span(tokens, a, b) for a, b in args]
        if upper == "USER_NAME" and len(arg) == 1:
            return f"(SELECT name FROM temp.sys_database_principals WHERE principal_id = ({arg[0]}))"
        if upper in ("USER_ID", "DATABASE_PRINCIPAL_ID") and len(arg) == 1:
            return f"(SELECT principal_id FROM temp.sys_database_principals WHERE name = ({arg[0]}))"
        if upper == "DB_NAME" and len(arg) == 1:
            return f"(SELECT name FROM temp.sys_databases WHERE database_id = ({arg[0]}))"
        if upper == "DB_ID" and len(arg) == 1:
            return f"(SELECT database_id FROM temp.sys_databases WHERE name = ({arg[0]}))"
        if upper == "IS_ROLEMEMBER" and len(arg) in (1, 2):
            member = arg[1] if len(arg) == 2 else self.bind(self.session.user_value("CURRENT_USER"))
            return _is_rolemember(arg[0], member)
        name = _RENAMED.get(upper, token.text)
        return f"{name}({', '.join(arg) if args else self._span(tokens, start, close)})"

    def _cast(self, tokens: list[Token], start: int, close: int) -> str:
        depth, at = 0, None
        for index in range(start, close):
            text = tokens[index].text
            depth += (text == "(") - (text == ")")
            if depth == 0 and tokens[index].is_word("AS"):
                at = index
        if at is None or at + 1 >= close:
            raise SqlError(102, f"Incorrect syntax near '{tokens[close].text}'.", severity=15)
        return _convert(tokens[at + 1].text.upper(), self._span(tokens, start, at), None)

    def column_names(self, described: list[str]) -> list[str]:
        """SQL Server's names of the result columns: a bare column's name, an alias, or "" for an expression."""
        items = _select_items(self.tokens)
        if items is None or len(items) != len(described):
            return described
        return [_item_name(item) for item in items]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _matching(tokens: list[Token], open_at: int) -> int:
    depth = 0
    for index in range(open_at, len(tokens)):
        if tokens[index].kind == "op" and tokens[index].text == "(":
            depth += 1
        elif tokens[index].kind == "op" and tokens[index].text == ")":
            depth -= 1
            if depth == 0:
                return index
    raise SqlError(102, f"Incorrect syntax near '{tokens[-1].text}'.", severity=15)


def _split_arguments(tokens: list[Token], start: int, stop: int) -> list[tuple[int, int]]:
    if start == stop:
        return []
    spans, depth, begin = [], 0, start
    for index in range(start, stop):
        text = tokens[index].text if tokens[index].kind == "op" else ""
        depth += (text == "(") - (text == ")")
        if depth == 0 and text == ",":
            spans.append((begin, index))
            begin = index + 1
    spans.append((begin, stop))
    return spans


def _convert(kind: str, expr: str, style: str | None) -> str:
    """SQLite for CAST/CONVERT of ``expr`` to a T-SQL type (its name upper-cased)."""
    if kind == "UNIQUEIDENTIFIER":
        return f"tsql_guid({expr})"
    if kind in ("VARBINARY", "BINARY"):
        return f"tsql_varbinary({expr})"
    if kind in _CHAR_TYPES:
        return f"tsql_text({expr}, {style or 0})"
    if kind in _INT_TYPES:
        return f"CAST({expr} AS INTEGER)"
    if kind == "BIT":
        return f"tsql_bit({expr})"
    raise NotEmulated(kind, f"conversion to {kind}")


def _is_rolemember(role: str, member: str) -> str:
    """IS_ROLEMEMBER: 1 or 0 through nested roles (dbo is in db_owner, everyone in public), NULL if either is unknown."""
    return (f"(WITH RECURSIVE tsql_m(id) AS (SELECT principal_id FROM temp.sys_database_principals WHERE name = "
            f"({member}) UNION SELECT rm.role_principal_id FROM temp.sys_database_role_members rm JOIN tsql_m ON "
            f"rm.member_principal_id = tsql_m.id) SELECT CASE WHEN r.principal_id IS NULL OR r.type <> 'R' OR "
            f"NOT EXISTS (SELECT 1 FROM tsql_m) THEN NULL WHEN r.principal_id = 0 OR r.principal_id IN "
            f"(SELECT id FROM tsql_m) OR (r.principal_id = {DB_OWNER} AND 1 IN (SELECT id FROM tsql_m)) THEN 1 "
            f"ELSE 0 END FROM (SELECT 1) LEFT JOIN temp.sys_database_principals r ON r.name = ({role}))")


def _select_items(tokens: list[Token]) -> list[list[Token]] | None:
    """The top-level select-list items, or None when one is ``*`` (or for WITH ... SELECT)."""
    if not tokens[0].is_word("SELECT"):
        return None
    start = 1
    while start < len(tokens) and tokens[start].is_word("DISTINCT", "ALL"):
        start += 1
    if start < len(tokens) and tokens[start].is_word("TOP"):
        start += 2 if start + 1 < len(tokens) and tokens[start + 1].text != "(" else 1
        if start < len(tokens) and tokens[start].text == "(":
            start = _matching(tokens, start) + 1
    items, depth, current = [], 0, []
    for token in tokens[start:]:
        text = token.text if token.kind == "op" else ""
        if depth == 0 and token.is_word("FROM", "WHERE", "GROUP", "ORDER", "HAVING", "UNION", "EXCEPT", "INTERSECT"):
            break
        depth += (text == "(") - (text == ")")
        if depth == 0 and text == ",":
            items.append(current)
            current = []
        else:
            current.append(token)
    items.append(current)
    if any(item and item[-1].text == "*" for item in items):
        return None
    return items


def _item_name(item: list[Token]) -> str:
    if not item:
        return ""
    last = item[-1]
    if len(item) >= 2 and item[-2].is_word("AS") and last.kind in ("word", "name", "string", "nstring"):
        return str(last.value)
    is_identifier = last.kind == "name" or (last.kind == "word" and last.text.upper() not in _NOT_ALIASES)
    if not is_identifier:
        return ""
    if len(item) == 1 or (len(item) >= 3 and item[-2].text == "." and len(item) in (3, 5)):
        return str(last.value)  # a bare (qualified) column
    if item[-2].kind in ("word", "name", "string", "nstring", "number", "binary", "variable", "sysvar") or \
            item[-2].text == ")":
        return str(last.value)  # an alias without AS
    return ""
