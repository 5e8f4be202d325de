"""Python call analysis on the syntax tree: where pattern rules guess, this knows.

It resolves import aliases (``from os import system as run``; ``import subprocess as sp``) and
looks at the arguments: ``eval("1+1")`` or ``os.system("ls")`` with a literal are not injection
sinks, while a command built with an f-string, ``%``, ``+`` or ``.format`` is worse than one
passed in a variable (error, not warning). The ``random`` module is reported only where it
makes a secret: the call's line, its enclosing function's name or a comment just above says so
(``rules.context``).
Returns ``None`` when the code does not parse, so the caller falls back to the pattern rules.
"""

from __future__ import annotations

import ast
import textwrap

from herd.safety.code_shield.findings import Finding
from herd.safety.code_shield.rules.context import COMMENT_LOOKBACK, comment_text, mentions_secret

# qualified call name -> (rule, cwe, message)
_SHELL = {"os.system", "os.popen", "os.popen2", "os.popen3", "os.popen4", "commands.getoutput",
          "commands.getstatusoutput", "subprocess.getoutput", "subprocess.getstatusoutput"}
_EXEC = {"os.execl", "os.execle", "os.execlp", "os.execv", "os.execve", "os.execvp", "os.spawnl", "os.spawnv"}
_SUBPROCESS = {"subprocess.run", "subprocess.call", "subprocess.check_call", "subprocess.check_output",
               "subprocess.Popen"}
_DESERIALIZE = {"pickle.load", "pickle.loads", "pickle.Unpickler", "cPickle.load", "cPickle.loads",
                "dill.load", "dill.loads", "jsonpickle.decode", "marshal.load", "marshal.loads", "shelve.open",
                "pandas.read_pickle", "torch.load"}
_RANDOM = {"random.random", "random.randint", "random.randrange", "random.choice", "random.choices",
           "random.sample", "random.shuffle", "random.uniform", "random.getrandbits", "random.randbytes"}


def _is_literal(node: ast.AST | None) -> bool:
    if node is None:
        return True
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, (ast.List, ast.Tuple)):
        return all(_is_literal(e) for e in node.elts)
    return False


def _is_built_string(node: ast.AST | None) -> bool:
    """An f-string, ``"..." % x``, ``"..." + x`` or ``"...".format(x)``: a string assembled from parts."""
    if isinstance(node, ast.JoinedStr):
        return any(isinstance(v, ast.FormattedValue) for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mod, ast.Add)):
        return not (_is_literal(node.left) and _is_literal(node.right))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format":
        return True
    return False


class _Visitor:
    def __init__(self, lines: list[str], line_offset: int, col_offset: int) -> None:
        self.aliases: dict[str, str] = {}
        self.findings: list[Finding] = []
        self.lines, self.line_offset, self.col_offset = lines, line_offset, col_offset
        self.function_of: dict[int, str] = {}  # id(call node) -> name of the innermost enclosing function

    def _secret_context(self, node: ast.Call) -> bool:
        line = self.lines[node.lineno - 1] if 0 < node.lineno <= len(self.lines) else ""
        above = comment_text(self.lines[max(0, node.lineno - 1 - COMMENT_LOOKBACK):node.lineno - 1])
        return any(mentions_secret(t) for t in (line, self.function_of.get(id(node), ""), above))

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            self.aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for a in node.names:
            self.aliases[a.asname or a.name] = f"{node.module}.{a.name}" if node.module else a.name

    def _name(self, func: ast.AST) -> str | None:
        if isinstance(func, ast.Name):
            return self.aliases.get(func.id, func.id)
        if isinstance(func, ast.Attribute):
            base = self._name(func.value)
            return f"{base}.{func.attr}" if base else None
        return None

    def _add(self, node: ast.AST, rule: str, cwe: str, severity: str, message: str) -> None:
        line = node.lineno
        text = self.lines[line - 1].strip() if 0 < line <= len(self.lines) else ""
        self.findings.append(Finding(rule, cwe, severity, message, "python", line + self.line_offset,
                                     node.col_offset + 1 + self.col_offset, text))

    def check_call(self, node: ast.Call) -> None:
        name = self._name(node.func) or ""
        arg0 = node.args[0] if node.args else None
        kw = {k.arg: k.value for k in node.keywords if k.arg}
        sev = "error" if _is_built_string(arg0) else "warning"
        if name in ("eval", "exec") and not _is_literal(arg0):
            self._add(node, f"py-{name}", "CWE-94", sev, f"{name}() of a non-literal runs arbitrary code.")
        elif name in _SHELL and not _is_literal(arg0):
            self._add(node, "py-os-system", "CWE-78", sev,
                      f"{name} runs a shell on a non-literal command: command injection if input reaches it.")
        elif name in _EXEC and not all(_is_literal(a) for a in node.args):
            self._add(node, "py-os-exec", "CWE-78", "warning", f"{name} with a non-literal program or arguments.")
        elif name in _SUBPROCESS and isinstance(kw.get("shell"), ast.Constant) and kw["shell"].value is True:
            literal = _is_literal(arg0 if arg0 is not None else kw.get("args"))
            self._add(node, "py-subprocess-shell", "CWE-78", "advice" if literal else sev,
                      "subprocess with shell=True" + ("" if literal else " on a non-literal command: command injectio"
                                                                         "n"))
        elif name in _DESERIALIZE and not (name == "torch.load" and _weights_only(kw)):
            self._add(node, "py-pickle", "CWE-502", "warning", f"{name} deserializes data that can run code.")
        elif name in ("yaml.load", "yaml.load_all") and not _safe_loader(node):
            self._add(node, "py-yaml-load", "CWE-502", "warning", "yaml.load without SafeLoader builds arbitrary obje"
                                                                  "cts.")
        elif name in ("yaml.unsafe_load", "yaml.full_load"):
            self._add(node, "py-yaml-load", "CWE-502", "warning", f"{name} builds arbitrary objects.")
        elif name.endswith((".execute", ".executemany", ".executescript")) and _is_built_string(arg0):
            self._add(node, "py-sql-format", "CWE-89", "error",
                      "SQL built by string formatting: SQL injection. Pass parameters instead.")
        elif name in _RANDOM and self._secret_context(node):
            self._add(node, "py-weak-random", "CWE-338", "advice",
                      "The random module is not cryptographically secure; use secrets for tokens and keys.")
        elif name == "random.seed" and isinstance(arg0, ast.Constant) and self._secret_context(node):
            self._add(node, "py-fixed-seed", "CWE-335", "warning", "A PRNG seeded with a constant is predictable.")
        elif name == "tempfile.mktemp":
            self._add(node, "py-mktemp", "CWE-377", "warning", "tempfile.mktemp returns a name another process can ta"
                                                               "ke.")
        elif name == "ssl._create_unverified_context" or (
                isinstance(kw.get("verify"), ast.Constant) and kw["verify"].value is False):
            self._add(node, "py-tls-unverified", "CWE-295", "warning", "TLS certificate verification is disabled.")


def _weights_only(kw: dict[str, ast.AST]) -> bool:
    v = kw.get("weights_only")
    return isinstance(v, ast.Constant) and v.value is True


def _safe_loader(node: ast.Call) -> bool:
    loaders = list(node.args[1:]) + [k.value for k in node.keywords if k.arg == "Loader"]
    return any("Safe" in ast.unparse(v) for v in loaders)


def analyze(code: str) -> list[Finding] | None:
    """Findings of the AST pass, or None if ``code`` is not parseable Python (even dedented)."""
    for candidate in (code, textwrap.dedent(code)):
        try:
            tree = ast.parse(candidate)
        except (SyntaxError, ValueError):
            continue
        col = 0
        if candidate is not code:  # report columns in the original text
            first = next((ln for ln in code.splitlines() if ln.strip()), "")
            col = len(first) - len(first.lstrip())
        visitor = _Visitor(candidate.splitlines(), 0, col)
        nodes = list(ast.walk(tree))  # flat walks: much cheaper than a recursive NodeVisitor
        for node in nodes:  # aliases first, wherever the imports are
            if isinstance(node, ast.Import):
                visitor.visit_Import(node)
            elif isinstance(node, ast.ImportFrom):
                visitor.visit_ImportFrom(node)
        for node in nodes:  # breadth-first: inner functions come later and overwrite their calls' entry
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for sub in ast.walk(node):
                    if isinstance(sub, ast.Call):
                        visitor.function_of[id(sub)] = node.name
        for node in nodes:
            if isinstance(node, ast.Call):
                visitor.check_call(node)
        return visitor.findings
    return None
