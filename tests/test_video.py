"""Video decoding: frame sampling, clip windows, resizing, bad files, counted skips."""

import logging
import random

import numpy as np
import pytest

from cosmo_vl.processing.video import (
    SkipCounter,
    VideoDecodingError,
    read_video,
    read_video_or_none,
    sample_indices,
    write_video,
)


def ramp(num_frames: int = 16, size: int = 32) -> np.ndarray:
    """Frame i is uniformly gray at level 16 * i: the decoded level tells the frame index."""
    return np.stack([np.full((size, size, 3), 16 * i, dtype=np.uint8) for i in range(num_frames)])


def frame_index(frames: np.ndarray) -> list[int]:
    return [int(round(f.mean() / 16)) for f in frames]


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("v") / "ramp.mp4", ramp(16), fps=8)  # 2 s


def test_uniform_indices_are_segment_centres():
    assert sample_indices(16, 4) == [2, 6, 10, 14]
    assert sample_indices(8, 8) == list(range(8))
    assert sample_indices(3, 6) == [0, 0, 1, 1, 2, 2]  # short videos repeat frames
    assert sample_indices(100, 2, start=10, end=20) == [12, 17]


def test_random_segment_picks_one_frame_per_segment():
    rng = random.Random(0)
    picks = [sample_indices(16, 4, "random_segment", rng) for _ in range(50)]
    assert all(4 * k <= p < 4 * (k + 1) for pick in picks for k, p in enumerate(pick))
    assert len({tuple(p) for p in picks}) > 10  # actually random
    assert sample_indices(16, 4, "random_segment", random.Random(3)) == sample_indices(
        16, 4, "random_segment", random.Random(3))
    with pytest.raises(ValueError, match="sampling"):
        sample_indices(16, 4, "middle")
    with pytest.raises(ValueError, match="empty frame window"):
        sample_indices(16, 4, start=20)


def test_read_video_keeps_time_order_and_windows(video):
    frames = read_video(video, num_frames=4)
    assert frames.shape == (4, 32, 32, 3) and frames.dtype == np.uint8
    assert frame_index(frames) == [2, 6, 10, 14]
    assert frame_index(read_video(video, num_frames=16)) == list(range(16))
    assert frame_index(read_video(video, num_frames=2, start=1.0, end=2.0)) == [10, 14]  # second half at 8 fps
    assert frame_index(read_video(video, num_frames=4, end=0.5)) == [0, 1, 2, 3]
    seeded = [read_video(video, num_frames=4, sampling="random_segment", seed=s) for s in (1, 1, 2)]
    assert np.array_equal(seeded[0], seeded[1])
    assert all(4 * k <= i < 4 * (k + 1) for k, i in enumerate(frame_index(seeded[2])))
    with pytest.raises(VideoDecodingError, match="empty window"):
        read_video(video, start=5.0)


def test_read_video_resizes(video):
    assert read_video(video, num_frames=2, size=16).shape == (2, 16, 16, 3)
    assert read_video(video, num_frames=2, size=(24, 40)).shape == (2, 24, 40, 3)


def test_bad_files_raise_errors_naming_the_file(video, tmp_path):
    data = video.read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (tmp_path / "zero.mp4").write_bytes(b"")
    (tmp_path / "garbage.mp4").write_bytes(bytes(random.Random(0).randrange(256) for _ in range(2048)))
    (tmp_path / "text.mp4").write_text("not a video")
    reasons = {"truncated.mp4": "", "zero.mp4": "0-byte", "garbage.mp4": "", "text.mp4": "", "missing.mp4": "not found"}
    for name, reason in reasons.items():
        with pytest.raises(VideoDecodingError, match=name) as err:
            read_video(tmp_path / name, num_frames=4)
        assert isinstance(err.value, ValueError) and reason in err.value.reason
        assert str(err.value.path).endswith(name)


def test_skip_counter_counts_per_reason(video, tmp_path, caplog):
    (tmp_path / "zero.mp4").write_bytes(b"")
    counter = SkipCounter()
    with caplog.at_level(logging.WARNING, logger="cosmo_vl.processing.video"):
        results = [read_video_or_none(p, counter=counter, num_frames=2)
                   for p in (video, tmp_path / "zero.mp4", tmp_path / "a.mp4", tmp_path / "b.mp4")]
    assert results[0].shape == (2, 32, 32, 3) and results[1:] == [None, None, None]
    assert counter == {"0-byte file": 1, "file not found": 2} and counter.total == 3
    assert "a.mp4" in caplog.text
    with pytest.raises(VideoDecodingError):
        read_video_or_none(tmp_path / "zero.mp4", on_error="raise")
    assert read_video_or_none(tmp_path / "zero.mp4") is None  # no counter: skipped silently


def test_write_video_rejects_bad_frames(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        write_video(tmp_path / "x.mp4", np.zeros((4, 8, 8), dtype=np.uint8))
