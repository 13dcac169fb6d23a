"""tests/napari: the napari plugin.

The Qt-free tests (prompts, session) run in the suite. The widget tests need
napari's and pytest-qt's pytest plugins, which the suite keeps out
(pyproject's addopts: ``-p no:napari -p no:pytest-qt``; their autouse
fixtures import Qt in every test), and a display; they run in a pytest of
their own, as .ci/run does::

    xvfb-run -a python -m pytest -p napari -p pytest-qt tests/napari

and are skipped, with that command as the reason, anywhere else.
"""

from __future__ import annotations

import pytest

COMMAND = "xvfb-run -a python -m pytest -p napari -p pytest-qt tests/napari"
GUI_FIXTURES = {"make_napari_viewer", "make_napari_viewer_proxy", "qtbot"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    loaded = config.pluginmanager.has_plugin("napari") and config.pluginmanager.has_plugin("pytest-qt")
    if loaded:
        return
    skip = pytest.mark.skip(reason=f"napari widget tests run in a pytest of their own: {COMMAND}")
    for item in items:
        if GUI_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(skip)
