"""The latentlens dashboard: a multi-page Dash app over runs recorded with latentlens.

Start it with ``latentlens dashboard RUN_DIR_OR_ROOT`` or from Python::

    from dashboards.app import create_app
    app = create_app("runs")
    app.run(host="127.0.0.1", port=8050)

It reads runs only through latentlens' public API (:func:`latentlens.open_run`,
:mod:`latentlens.results`, :class:`latentlens.Direction`, :func:`latentlens.load_pipeline`).
"""
