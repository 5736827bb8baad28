"""Export: trained runs -> one self-contained bundle directory; and reading it back.

    python -m recsys.export ranker_run=<run dir> retrieval_run=<run dir> out=bundles/demo
    python -m recsys.export.inspect bundles/demo
    bundle = recsys.export.load_bundle("bundles/demo")

recsys/export/layout.py lists the bundle's files.
"""

from recsys.export.layout import FORMAT_VERSION
from recsys.export.reader import Bundle, BundleError, FeatureSnapshot, load_bundle, verify_bundle
from recsys.export.writer import ExportError, ExportSettings, export_bundle

__all__ = [
    "FORMAT_VERSION",
    "Bundle",
    "BundleError",
    "ExportError",
    "ExportSettings",
    "FeatureSnapshot",
    "export_bundle",
    "load_bundle",
    "verify_bundle",
]
