"""Example programs and flows; `loyalty dev --demo` loads `examples.demo:app`."""
