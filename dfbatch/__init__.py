"""dfbatch: distributed batch scoring of video archives for deepfakes."""

__version__ = "0.1.0"


def read_results(output: str, table: str = "videos"):
    """Results under OUT (local or s3://) as a pandas DataFrame; table = "videos" or "faces"."""
    from dfbatch.io.results import read_results as _read

    return _read(output, table)
