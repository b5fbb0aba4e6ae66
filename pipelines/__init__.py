"""soundloom's pipelines. `pipelines.load_generator` and `pipelines.Audio` are imported on first use, so
`import pipelines` stays light (no torch) for the CLI's `--help`."""

_LAZY = {
    "Audio": "pipelines.audio",
    "Generator": "pipelines.generator",
    "load_generator": "pipelines.generator",
}
__all__ = list(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'pipelines' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
