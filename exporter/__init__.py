"""llm-cost-exporter: LLM provider usage and cost as Prometheus metrics."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("llm-cost-exporter")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+src"
