"""The generation job: validate a config, scan the source, plan the shards, make each
shard in a Ray task and write the manifest last.

The same config, seed and sources give byte-identical shards and manifest; a rerun after a
crash keeps the shards already made. `pipelines/generate.py` is its command line.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, field_validator, model_validator

from core import cluster
from core.cli import console, progress_bar
from core.config import StrictModel, config_hash
from core.storage import (
    StorageError,
    check_storage,
    exists,
    filesystem,
    is_local,
    join,
    remove,
)
from datagen import procedural as datagen_procedural
from datagen import sources as datagen_sources
from datagen.manifest import build_manifest, manifest_url, read_manifest, write_manifest
from datagen.plan import plan_shards
from datagen.shards import ShardResult, ShardSpec, build_shard
from datagen.synthesis import (
    VIDEO_SETTINGS,
    ClipSettings,
    VideoWindow,
    window_positions,
    window_short_side,
)


class GenerateError(RuntimeError):
    """A job that cannot start; the message is one line."""


class ProceduralSection(StrictModel):
    """Procedural scenes rendered inside the tasks (no files)."""

    count: int = Field(64, gt=0)  # images, or video sequences
    width: int = Field(160, ge=16)
    height: int = Field(120, ge=16)
    num_objects: int = Field(1, ge=1, le=8)
    frames: int = Field(12, ge=3)  # videos only
    late_object: bool = False  # videos: the last object enters a third of the way in
    style: str = "classic"  # a scene style of datagen.procedural.STYLES, e.g. lookalike_lanes
    seed: int = 0

    @field_validator("style")
    @classmethod
    def _known_style(cls, style: str) -> str:
        datagen_procedural.scene_style(style)  # "unknown scene style ...; choose one of ..."
        return style


class SourceSection(StrictModel):
    """Where the inputs are. `path` is a local folder or an fsspec URL (e.g. s3://bucket/davis)."""

    kind: Literal["images", "davis", "youtube", "procedural_images", "procedural_videos"]
    path: str | None = None
    image_dir: str = ""  # images: folder of images under path
    mask_dir: str | None = None  # images: folder of masks under path; None = beside the images
    mask_pattern: str = "{stem}.png"  # images: the mask's name from the image's stem
    image_suffixes: list[str] = [".jpg", ".jpeg", ".png", ".bmp", ".webp"]
    resolution: str = "480p"  # davis
    sequences: list[str] | None = None  # davis / youtube: only these sequences
    procedural: ProceduralSection = ProceduralSection()

    @model_validator(mode="after")
    def _path_when_needed(self):
        if not self.kind.startswith("procedural") and not self.path:
            raise ValueError(f"source.path is required for kind {self.kind!r}")
        if "{stem}" not in self.mask_pattern:
            raise ValueError("source.mask_pattern must contain {stem}")
        return self

    @property
    def is_video(self) -> bool:
        return self.kind in ("davis", "youtube", "procedural_videos")


class ClipsSection(StrictModel):
    """What is made. Image sources give `clips_per_source` fixed 3-frame clips each: the
    variety a pretraining run sees (training varies only their flip, colour and crop), so give
    enough images x clips_per_source for the run (training warns when an epoch plan replays each
    clip more than 10 times). Video sources are cut into windows of consecutive frames that
    hold clips with gaps up to `max_skip` raw frames; training draws a fresh clip from each
    window every epoch (`clips_per_source` does not apply to them)."""

    size: int = Field(384, ge=32, le=2048)
    clips_per_source: int = Field(1, gt=0)  # images: clips per image
    num_clips: int | None = Field(
        None, gt=0
    )  # None: every image clips_per_source times / every window
    clips_per_shard: int = Field(256, gt=0)  # samples per shard (clips, or video windows)
    max_skip: int = Field(25, gt=0)  # videos: largest gap a window holds, in raw video frames
    window_stride: int | None = Field(None, gt=0)  # videos: raw frames between window starts
    window_margin: float = Field(0.15, ge=0, le=1)  # videos: shorter side (1 + margin) x size
    min_object_area: float = Field(0.01, ge=0, lt=1)  # fraction of the crop
    min_visible: float = Field(0.5, ge=0, le=1)  # fraction of the object that stays in view
    max_attempts: int = Field(20, gt=0)
    jpeg_quality: int = Field(90, ge=50, le=100)
    # images: regions of background added to each image as objects to follow, each one of its
    # object masks moved elsewhere (`datagen.synthesis.add_background_regions`)
    background_regions: int = Field(0, ge=0, le=8)
    # images: scale every image to a shorter side of `size` before the warps (a crop then
    # shows about the whole image, as inference at the training size sees a frame); False:
    # only images smaller than that are enlarged (the papers' 384 px crops of ~400 px images)
    fit_source: bool = False


class AugmentationSection(StrictModel):
    """Per-frame geometry of image clips (the papers' ranges by default). Video windows are
    stored unwarped; training flips, colour-jitters and crop-jitters the clips it draws."""

    rotation: tuple[float, float] = (-30.0, 30.0)  # degrees
    scale: tuple[float, float] = (0.75, 1.25)
    tps_strength: float = Field(
        0.08, ge=0, le=0.5
    )  # largest control-point offset (half-crop units)
    tps_points: int = Field(4, ge=3, le=10)
    grid_points: int = Field(17, ge=4, le=129)

    @model_validator(mode="after")
    def _ordered(self):
        for name in ("rotation", "scale"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"augmentation.{name} must be [low, high], got [{low}, {high}]")
        if self.scale[0] <= 0:
            raise ValueError("augmentation.scale must be positive")
        return self


class OutputSection(StrictModel):
    url: str  # local folder, file://... or s3://bucket/prefix
    split: str | None = None  # when set, shards go to <url>/<split>/
    overwrite: bool = False  # replace a set made with another config at the same place

    @property
    def set_url(self) -> str:
        return join(self.url, self.split) if self.split else self.url


class RaySection(StrictModel):
    address: str | None = None  # None: RAY_ADDRESS, else a Ray started on this machine
    num_cpus: int | None = Field(None, gt=0)  # for a Ray started here
    cpus_per_task: float = Field(1.0, gt=0)
    max_tasks_in_flight: int | None = Field(None, gt=0)  # None: twice the cluster's CPUs


class GenerateConfig(StrictModel):
    source: SourceSection
    output: OutputSection
    clips: ClipsSection = ClipsSection()
    augmentation: AugmentationSection | None = None  # None: defaults for the source kind
    seed: int = 0
    ray: RaySection = RaySection()

    @model_validator(mode="after")
    def _augmentation_for_kind(self):
        if self.source.is_video and self.clips.background_regions:
            raise ValueError(
                "clips.background_regions is for image sources: a video's frames are not one"
                " warped image, so a moved mask would not follow the background it covers"
            )
        if self.source.is_video and self.clips.fit_source:
            raise ValueError(
                "clips.fit_source is for image sources: video windows are always stored at"
                " a shorter side of (1 + clips.window_margin) x clips.size"
            )
        if self.augmentation is None:
            defaults = VIDEO_SETTINGS if self.source.is_video else ClipSettings()
            self.augmentation = AugmentationSection(
                rotation=defaults.rotation,
                scale=defaults.scale,
                tps_strength=defaults.tps_strength,
                tps_points=defaults.tps_points,
                grid_points=defaults.grid_points,
            )
        return self

    def content(self) -> dict:
        """What determines the shards' bytes (the manifest's `config`; its hash names the set)."""
        data = self.model_dump(mode="json", include={"source", "clips", "augmentation", "seed"})
        if not self.source.kind.startswith("procedural"):
            data["source"].pop("procedural")
        elif self.source.procedural.style == "classic":  # classic sets keep their pre-style hash
            data["source"]["procedural"].pop("style")
        if not self.source.is_video:  # unchanged by the video options: image sets keep their hash
            for name in ("window_stride", "window_margin"):
                data["clips"].pop(name)
        for name in ("background_regions", "fit_source"):  # sets made without keep their hash
            if not data["clips"][name]:
                data["clips"].pop(name)
        return data

    def clip_settings(self) -> ClipSettings:
        aug, clips = self.augmentation, self.clips
        return ClipSettings(
            size=clips.size,
            rotation=tuple(aug.rotation),
            scale=tuple(aug.scale),
            tps_strength=aug.tps_strength,
            tps_points=aug.tps_points,
            grid_points=aug.grid_points,
            min_object_area=clips.min_object_area,
            min_visible=clips.min_visible,
            max_attempts=clips.max_attempts,
            max_skip=clips.max_skip,
            window_stride=clips.window_stride,
            window_margin=clips.window_margin,
            background_regions=clips.background_regions,  # 0 for videos (validated)
            fit_source=clips.fit_source,
        )


# -- steps --------------------------------------------------------------------------------------


def scan(source: SourceSection) -> datagen_sources.Scan:
    """List the inputs of the configured source."""
    kind, proc = source.kind, source.procedural
    if kind == "procedural_images":
        return datagen_sources.procedural_image_sources(
            proc.count, proc.seed, proc.width, proc.height, proc.num_objects, proc.style
        )
    if kind == "procedural_videos":
        return datagen_sources.procedural_video_sources(
            proc.count,
            proc.seed,
            proc.frames,
            proc.width,
            proc.height,
            max(proc.num_objects, 1),
            proc.late_object,
            proc.style,
        )
    if not is_local(source.path):
        check_storage(source.path, write=False)  # endpoint, credentials, bucket: one line
    try:
        fs, root = filesystem(source.path)
        if not fs.isdir(root):
            raise GenerateError(f"source.path {source.path}: no such folder")
        if kind == "images":
            return datagen_sources.scan_image_folders(
                source.path,
                source.image_dir,
                source.mask_dir,
                tuple(source.image_suffixes),
                source.mask_pattern,
            )
        if kind == "davis":
            return datagen_sources.scan_davis(source.path, source.resolution, source.sequences)
        return datagen_sources.scan_youtube(source.path, source.sequences)
    except OSError as err:
        raise GenerateError(
            f"source {source.path}: cannot be listed: {' '.join(str(err).split())}"
        ) from None


def _check_existing_set(set_url: str, content_hash: str, overwrite: bool) -> None:
    """Refuse to mix a new set into one made with another config; remove its manifest first."""
    location = manifest_url(set_url)
    if not exists(location):
        return
    try:
        previous = read_manifest(location).get("config_hash")
    except Exception:  # noqa: BLE001 - an unreadable manifest is replaced like a stale one
        previous = None
    if previous == content_hash:
        return  # the same set: shards are verified and kept, the manifest rewritten identically
    if not overwrite:
        raise GenerateError(
            f"{set_url} already holds a shard set made with another config (hash {str(previous)[:12]}); "
            "choose another output.url or set output.overwrite=true"
        )
    remove(location)  # the set is incomplete from now until the new manifest is written


def _check_storage_from_a_task(set_url: str) -> None:
    """Check the output storage from a Ray task too: the workers' credentials and endpoint come
    from their own nodes, not from this driver (one line instead of a traceback per task)."""
    import ray

    def problem_with(url: str) -> str | None:
        try:
            check_storage(url)
        except StorageError as err:
            return str(err)
        return None

    task = ray.remote(problem_with).options(num_cpus=0, runtime_env=cluster.runtime_env())
    problem = ray.get(task.remote(set_url))
    if problem:
        raise GenerateError(f"on the cluster's workers: {problem}")


def _make_shards(specs: list[ShardSpec], set_url: str, section: RaySection, progress) -> list:
    """One Ray task per shard, at most `max_tasks_in_flight` at a time; `progress(result)`."""
    import ray
    import torch

    @ray.remote(max_retries=3)
    def make_shard(spec: ShardSpec, output_url: str):
        torch.set_num_threads(1)  # one core per task; Ray runs one task per core
        return build_shard(spec, output_url)

    limit = section.max_tasks_in_flight or max(2, int(2 * ray.cluster_resources().get("CPU", 1)))
    task = make_shard.options(num_cpus=section.cpus_per_task)
    results = []
    for _, ref in cluster.as_completed(lambda spec: task.remote(spec, set_url), specs, limit):
        results.append(ray.get(ref))
        progress(results[-1])
    return results


@dataclass
class SetPlan:
    """What a job will make: the scanned sources and one spec per shard."""

    config: GenerateConfig
    scanned: datagen_sources.Scan  # the sources found and the inputs skipped
    content: dict
    content_hash: str
    kind: str
    settings: ClipSettings
    specs: list[ShardSpec]

    @property
    def total_clips(self) -> int:
        return sum(len(spec.clips) for spec in self.specs)


def plan_set(config: GenerateConfig) -> SetPlan:
    """Scan the source and plan every shard (no shard is made here)."""
    found = scan(config.source)
    if not found.sources:
        reasons = ", ".join(f"{s.source}: {s.reason}" for s in found.skipped[:3])
        raise GenerateError(
            f"no usable inputs in {config.source.path or config.source.kind}"
            + (f" ({len(found.skipped)} skipped, e.g. {reasons})" if found.skipped else "")
        )
    content = config.content()
    settings = config.clip_settings()
    kind = "video" if config.source.is_video else "image"
    content_hash = config_hash(content)
    planned = plan_shards(
        video_windows(found.sources, settings) if kind == "video" else found.sources,
        clips_per_source=config.clips.clips_per_source if kind == "image" else 1,
        clips_per_shard=config.clips.clips_per_shard,
        seed=config.seed,
        num_clips=config.clips.num_clips,
    )
    specs = [
        ShardSpec(index, kind, tuple(clips), settings, content_hash, config.clips.jpeg_quality)
        for index, clips in enumerate(planned)
    ]
    return SetPlan(config, found, content, content_hash, kind, settings, specs)


def video_windows(videos: list, settings: ClipSettings) -> list[VideoWindow]:
    """Every video's windows (see `datagen.synthesis.window_positions`), in scan order."""
    return [
        VideoWindow(video, positions)
        for video in videos
        for positions in window_positions(
            video.frame_indices(), settings.max_skip, settings.window_stride, settings.num_frames
        )
    ]


def write_set_manifest(plan: SetPlan, results: list[ShardResult]) -> tuple[str, dict]:
    """Write the manifest of a planned set whose shards are all made (last, so that readers
    never see a set without every shard); returns its URL and the manifest."""
    skipped = [(s.source, s.reason) for s in plan.scanned.skipped]
    skipped += [tuple(pair) for result in results for pair in result.record["skipped"]]
    manifest = build_manifest(
        kind=plan.kind,
        split=plan.config.output.split,
        config=plan.content,
        config_hash=plan.content_hash,
        source_fingerprint=plan.scanned.fingerprint,
        size=plan.settings.size,
        frames=plan.settings.num_frames,
        shard_records=[result.record for result in results],
        skipped=skipped,
        window={
            "max_skip": plan.settings.max_skip,
            "short_side": window_short_side(plan.settings),
        },
    )
    return write_manifest(plan.config.output.set_url, manifest), manifest


def run(config: GenerateConfig) -> dict:
    """Run the job; returns the summary (also printed)."""
    started = time.perf_counter()
    set_url = config.output.set_url
    check_storage(set_url)
    plan = plan_set(config)
    _check_existing_set(set_url, plan.content_hash, config.output.overwrite)
    specs = plan.specs
    print(
        f"generate: {len(plan.scanned.sources)} {plan.kind} sources, {len(plan.scanned.skipped)} "
        f"inputs skipped while scanning; {plan.total_clips} clips in {len(specs)} shards "
        f"-> {set_url}",
        flush=True,
    )

    started_ray = cluster.connect(config.ray.address, config.ray.num_cpus)
    try:
        _check_storage_from_a_task(set_url)
        with progress_bar() as bar:
            task = bar.add_task("making shards", total=plan.total_clips)
            results = _make_shards(
                specs,
                set_url,
                config.ray,
                lambda result: bar.advance(task, len(specs[result.record["index"]].clips)),
            )
    finally:
        if started_ray:
            import ray

            ray.shutdown()

    location, manifest = write_set_manifest(plan, results)
    seconds = time.perf_counter() - started
    made = sum(result.clips_made for result in results)
    summary = {
        "manifest": location,
        "clips": manifest["total_samples"],
        "shards": len(manifest["shards"]),
        "bytes": manifest["total_bytes"],
        "skipped": manifest["skipped"],
        "shards_written": sum(r.status == "written" for r in results),
        "shards_replaced": sum(r.status == "replaced" for r in results),
        "shards_kept": sum(r.status == "kept" for r in results),
        "clips_made": made,
        "seconds": round(seconds, 2),
        "clips_per_s": round(made / seconds, 2) if seconds > 0 else 0.0,
        "config_hash": plan.content_hash,
    }
    print_summary(summary, manifest["skipped_examples"])
    return summary


def print_summary(summary: dict, examples: list) -> None:
    from rich.table import Table

    table = Table(title="generate: summary", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("clips", str(summary["clips"]))
    table.add_row(
        "shards",
        f"{summary['shards']} ({summary['shards_written']} written, {summary['shards_replaced']} "
        f"replaced, {summary['shards_kept']} kept)",
    )
    table.add_row("bytes", f"{summary['bytes']:,}")
    for reason, count in summary["skipped"].items():
        table.add_row(f"skipped: {reason}", str(count))
    if not summary["skipped"]:
        table.add_row("skipped", "0")
    table.add_row("time", f"{summary['seconds']:.1f} s")
    table.add_row("clips/s (made in this run)", f"{summary['clips_per_s']:.1f}")
    table.add_row("manifest", summary["manifest"])
    console.print(table)
    for source, reason in examples[:5]:
        console.print(f"  skipped {source}: {reason}")


# -- command line -------------------------------------------------------------------------------
