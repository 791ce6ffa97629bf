"""The core package works without py4DSTEM; the py4DSTEM front end says how to install it."""

import subprocess
import sys
import textwrap


def test_core_imports_without_py4dstem_and_front_end_names_the_extra():
    # sys.modules[name] = None makes "import name" raise ImportError, as if it were not installed.
    script = textwrap.dedent(
        """
        import sys
        sys.modules["py4DSTEM"] = None
        import app_extension
        from app_extension.solver.engine import reconstruct
        from app_extension.simulate import simulate_tilted_crystal
        import app_extension.signals.ptychography
        import app_extension.results
        try:
            import app_extension.py4dstem
        except ImportError as error:
            print("MESSAGE:", error)
        else:
            raise SystemExit("app_extension.py4dstem imported without py4DSTEM")
        assert "py4DSTEM" not in {k for k, v in sys.modules.items() if v is not None}
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert 'pip install "app_extension[py4dstem]"' in out.stdout
