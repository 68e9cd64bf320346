"""The registry browser (``forml-s3 ui``): a small server-rendered web application over a registry.

* :mod:`forml_s3.ui.model` - what the pages show, read at one LIST per level page and one GET per marker shown;
* :mod:`forml_s3.ui.app` - the Starlette application: routes, views, the CSRF-guarded writes;
* :mod:`forml_s3.ui.chart` - the geometry of a release's SVG chart;
* :mod:`forml_s3.ui.highlight` - the escaped, highlighted source of an application descriptor;
* :mod:`forml_s3.ui.config` - the default registry and inventory of the ForML config;
* ``templates/`` - Jinja2 templates (autoescaped), CSS inline: nothing is loaded from elsewhere.
"""
