"""The Python side of stepkernel: runs code and tests inside the user's interpreter."""

import sys as _sys

if _sys.dont_write_bytecode:

    def _keep_own_bytecode() -> None:
        """Caches this package's bytecode in stepkernel's own cache even under PYTHONDONTWRITEBYTECODE.

        The kernel unpacks the package into its private cache directory (which
        it marks with ``.complete``); compiling the modules a run imports anew
        at every start cost about 250M instructions (a quarter of a one-test
        run). The flag is about the user's files, and it stays as it is: only
        the finders of this package's own directories cache their bytecode.
        Kept here, small, because this module itself is compiled at every start.
        """
        import marshal
        import os
        from importlib.machinery import SOURCE_SUFFIXES, FileFinder, SourceFileLoader
        from importlib.util import MAGIC_NUMBER, cache_from_source

        here = __path__[0]
        if not os.path.exists(os.path.join(os.path.dirname(here), ".complete")):
            return  # a checkout or an installed copy: Python's rules

        class OwnBytecodeLoader(SourceFileLoader):
            def source_to_code(self, data, path, *, _optimize=-1):  # type: ignore[override]
                code = super().source_to_code(data, path, _optimize=_optimize)
                try:
                    st = os.stat(path)
                    # A timestamp .pyc (PEP 552 flags 0), as Python would have written it.
                    header = MAGIC_NUMBER + b"\0\0\0\0" + (int(st.st_mtime) & 0xFFFFFFFF).to_bytes(4, "little")
                    header += (st.st_size & 0xFFFFFFFF).to_bytes(4, "little")
                    self.set_data(cache_from_source(path), header + marshal.dumps(code), _mode=(st.st_mode & 0o777) | 0o200)
                except (OSError, ValueError, NotImplementedError):
                    pass  # no cache, as without this loader
                return code

        # This package and its subpackages: every directory whose modules import through its __path__.
        directories = [here] + [
            entry.path for entry in os.scandir(here)
            if entry.is_dir() and os.path.exists(os.path.join(entry.path, "__init__.py"))
        ]
        for directory in directories:
            _sys.path_importer_cache[directory] = FileFinder(directory, (OwnBytecodeLoader, SOURCE_SUFFIXES))

    _keep_own_bytecode()
    del _keep_own_bytecode
