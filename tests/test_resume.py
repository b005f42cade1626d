"""Rows that stay right across jobs on one OUT: --rescore replaces exactly the rows of the videos it scored again
(other sources' and other models' rows stay), and a second job or read in the same process sees what other
processes wrote to an S3 OUT since the first."""

from __future__ import annotations

import io
import os
from datetime import timedelta

import boto3
import pyarrow.parquet as pq
import pytest

from dfbatch.config import SamplingConfig, ScoreConfig
from dfbatch.io.results import ResultStore, read_results, to_tables
from dfbatch.io.storage import Storage
from test_sink import T0, _ids, _row

FRAMES = 4


def _clips(root, names, source_clip) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    for n in names:
        (root / n).write_bytes(source_clip.read_bytes())
    return sorted(str(root / n) for n in names)


@pytest.mark.slow
def test_rescore_replaces_only_the_rescored_videos_rows(ray_local, mlflow_uri, tiny_model, clip_dir, tmp_path):
    """`score A -o OUT`, `score B -o OUT`, `score A -o OUT --rescore`: B's rows stay, A's are replaced, and the rows of
    a model named like this version's file key (`dfbatch-detector-v<N>`) in the same OUT are not touched."""
    from dfbatch.models import registry
    from dfbatch.models.detector import build_model
    from dfbatch.pipeline import run_score

    a = _clips(tmp_path / "A", ["a1.mp4", "a2.mp4"], clip_dir / "carphone.mp4")
    b = _clips(tmp_path / "B", ["b1.mp4"], clip_dir / "faceless.mp4")
    out = str(tmp_path / "out")
    twin = f"dfbatch-detector-v{tiny_model['version']}"  # its part names start with the tiny model's part prefix
    twin_version = registry.register(build_model(tiny_model["spec"]), tiny_model["spec"], twin, threshold=0.5)

    def score(src, model=tiny_model["uri"], **kw):
        return run_score(ScoreConfig(sources=[src], output=out, model_uri=model, sampling=SamplingConfig(frames=FRAMES),
                                     face_workers=1, **kw))

    score(str(tmp_path / "A"))
    score(str(tmp_path / "B"))
    score(str(tmp_path / "A"), model=f"models:/{twin}/{twin_version}")
    before = read_results(out).set_index(["model_name", "video_uri"])
    redo = score(str(tmp_path / "A"), rescore=True)
    after = read_results(out).set_index(["model_name", "video_uri"])
    assert redo.scored == 2 and redo.replaced == 2
    assert sorted(after.index) == sorted(before.index) == sorted(
        [("dfbatch-detector", u) for u in a + b] + [(twin, u) for u in a])
    mine = after.loc["dfbatch-detector"]
    assert (mine.loc[a].mlflow_run_id == redo.mlflow_run_id).all()  # A: the rescore's rows
    assert (mine.loc[a].scored_at > before.loc["dfbatch-detector"].loc[a].scored_at).all()
    assert mine.loc[b].equals(before.loc["dfbatch-detector"].loc[b])  # B: untouched
    assert after.loc[twin].equals(before.loc[twin])  # the other model: untouched
    faces = read_results(out, "faces")
    assert set(faces[faces.model_name == "dfbatch-detector"].mlflow_run_id) == {redo.mlflow_run_id}  # A's faces are new
    assert not faces.duplicated(["model_name", "video_id", "track_id"]).any()


def _parquet(table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def test_a_second_read_in_one_process_sees_parts_other_processes_wrote(s3_endpoint):
    """Library users call read_results / run_score twice in a notebook: the second call must list S3 again (s3fs
    caches listings for the life of the process unless told not to)."""
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="cache")
    storage = Storage(s3_endpoint)
    videos, faces = to_tables([_row(1)])
    s3.put_object(Bucket="cache", Key="out/videos/part-m-v1-0000000000000001.parquet", Body=_parquet(videos))
    assert list(read_results("s3://cache/out", storage=storage).video_id) == ["id1"]
    assert _ids(ResultStore("s3://cache/out", storage), "m", "1") == {"id1"}
    # a worker (another process) commits a part meanwhile
    s3.put_object(Bucket="cache", Key="out/videos/part-m-v1-0000000000000002.parquet", Body=_parquet(to_tables([_row(2)])[0]))
    assert sorted(read_results("s3://cache/out", storage=storage).video_id) == ["id1", "id2"]
    assert _ids(ResultStore("s3://cache/out", storage), "m", "1") == {"id1", "id2"}


def test_drop_superseded_on_s3(s3_endpoint):
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="rescore")
    store = ResultStore("s3://rescore/out", Storage(s3_endpoint))
    store.check_writable()
    store.write_part([_row(1, at=1, crops=True), _row(2, at=1, crops=True)], job_id="A")
    store.write_part([_row(3, at=1, crops=True)], job_id="B")
    store.write_part([_row(1, at=5, crops=True), _row(3, at=5, crops=True)], job_id="rescore")
    assert store.drop_superseded("m", "1") == 2
    df = read_results("s3://rescore/out", storage=Storage(s3_endpoint)).set_index("video_id")
    assert dict(df.scored_at) == {"id1": T0 + timedelta(seconds=5), "id2": T0 + timedelta(seconds=1), "id3": T0 + timedelta(seconds=5)}
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="rescore", Prefix="out/")["Contents"])
    crops = [k for k in keys if k.startswith("out/crops/")]
    assert len(crops) == 3 and len([k for k in keys if k.startswith("out/videos/")]) == 2  # B's part went whole
    assert sorted(read_results("s3://rescore/out", "faces", storage=Storage(s3_endpoint)).video_id) == ["id1", "id2", "id3"]
    assert os.path.basename(crops[0]).startswith("id")


@pytest.mark.slow
def test_a_symlinked_folder_holds_the_same_videos(ray_local, mlflow_uri, tiny_model, clip_dir, tmp_path):
    """The same files listed through a symlinked folder and through their real folder, in one job and across
    jobs: one row per file (the ids hash the resolved path)."""
    from dfbatch.pipeline import run_score

    real = _clips(tmp_path / "real", ["a.mp4", "b.mp4"], clip_dir / "faceless.mp4")
    os.symlink(tmp_path / "real", tmp_path / "link")
    out = str(tmp_path / "out")

    def score(*sources):
        return run_score(ScoreConfig(sources=[str(s) for s in sources], output=out, model_uri=tiny_model["uri"],
                                     sampling=SamplingConfig(frames=FRAMES), face_workers=1))

    both = score(tmp_path / "link", tmp_path / "real")
    assert (both.listed, both.duplicates, both.scored) == (4, 2, 2)
    df = read_results(out)
    assert len(df) == 2 and df.video_id.is_unique
    again = score(real[0])  # the real path of a file scored through the link: already scored
    assert (again.listed, again.skipped, again.scored) == (1, 1, 0)
