"""A Griffe extension: the public names of ``jaxdissect`` as documented objects.

``jaxdissect/__init__.py`` imports its public names lazily from a table (``_EXPORTS``,
PEP 562), which static analysis cannot follow. This extension reads that table and makes
each name an alias of its definition, so the API reference writes ``jaxdissect.dissect``
wherever the function's module is.
"""

import ast

import griffe


class LazyExports(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs) -> None:
        if pkg.name != "jaxdissect":
            return
        tree = ast.parse(pkg.filepath.read_text())
        for node in tree.body:
            if isinstance(node, ast.AnnAssign | ast.Assign) and "_EXPORTS" in ast.unparse(node):
                exports = ast.literal_eval(node.value)
                break
        else:
            raise RuntimeError(f"{pkg.filepath}: no _EXPORTS table")
        for name, module in exports.items():
            pkg.set_member(name, griffe.Alias(name, f"{module}.{name}", parent=pkg))
