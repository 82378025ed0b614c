"""Finding and checking incoming sequences: verdicts by reason, fingerprints by content."""

from __future__ import annotations

import numpy as np
from PIL import Image

from datagen.procedural import write_procedural_videos
from orchestration.ingest import find_sequences


def test_each_bad_sequence_gets_its_reason_and_the_rest_are_usable(tmp_path):
    root = write_procedural_videos(tmp_path, n_sequences=5, n_frames=4, seed=3, size=(48, 32))
    frames, masks = root / "JPEGImages" / "480p", root / "Annotations" / "480p"
    (frames / "seq001" / "00002.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    Image.new("P", (20, 20)).save(masks / "seq002" / "00001.png")  # mask of another size
    Image.new("P", (48, 32)).save(masks / "seq003" / "00000.png")  # first mask is empty
    (masks / "seq004" / "00001.png").unlink()  # too few annotated frames left
    (masks / "seq004" / "00002.png").unlink()

    verdicts = {s.name: s for s in find_sequences(str(root), "davis")}

    assert sorted(verdicts) == ["seq000", "seq001", "seq002", "seq003", "seq004"]
    assert verdicts["seq000"].usable
    assert verdicts["seq001"].problem.startswith("seq001/00002.jpg: corrupt image")
    assert "mask size mismatch" in verdicts["seq002"].problem
    assert verdicts["seq003"].problem.startswith("empty mask")
    assert verdicts["seq004"].problem.startswith("too few annotated frames")


def test_fingerprint_changes_with_content_only(tmp_path):
    root = write_procedural_videos(tmp_path, n_sequences=2, n_frames=3, seed=4, size=(48, 32))
    before = {s.name: s.fingerprint for s in find_sequences(str(root))}
    assert before["seq000"] != before["seq001"]
    assert {s.name: s.fingerprint for s in find_sequences(str(root))} == before

    frame = root / "JPEGImages" / "480p" / "seq001" / "00001.jpg"
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(frame, quality=10)
    after = {s.name: s.fingerprint for s in find_sequences(str(root))}
    assert after["seq000"] == before["seq000"]
    assert after["seq001"] != before["seq001"]
