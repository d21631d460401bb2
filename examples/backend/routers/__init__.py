"""The example backend's routers, each included by app.py with its prefix."""
