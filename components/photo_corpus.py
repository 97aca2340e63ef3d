"""The offline photo corpus: real photographs from Debian packages, fetched with the machine's own apt.

`dsrhn photos` (fetch_corpus) downloads the packages below with `apt-get download` (the machine's apt
sources, nothing installed), unpacks each with `dpkg-deb -x`, takes the photos each package's selection
names (which and why: docs/data.md), reads those inside Qt resource bundles and Eet files with
components/containers.py, and keeps a photo when

* it decodes, and is >= 1 megapixel (the labelled set is exempt: GCompris ships it at 320 px),
* no photo kept before has the same bytes (sha256) or nearly the same picture (256-bit difference hash
  within NEAR_DUPLICATE bits: a wallpaper shipped at several sizes, a menu background reusing a level's).

Photos are split **by photo**, once and for all, from their content: within each package, sorted by
sha256, every TEST_EVERY-th is a held-out test photo. They are written, bytes unchanged, as

    <root>/train/<package>--<name>     photos to train on
    <root>/test/<package>--<name>      held-out photos (never trained on)
    <root>/labelled/<set>/<class>/<name>   GCompris's categorisation classes (labelled retrieval)
    <root>/manifest.json               every photo: file, package, version, licence, size, bytes, sha256,
                                       dhash, split, where it came from; every dropped one with its reason
    <root>/debs/                       the downloaded packages (a re-run downloads nothing)

Re-running with the files in place is a no-op (checksums verified). A package that cannot be downloaded
or unpacked is named in the error, and everything else fetched is kept and written.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

from components.containers import ContainerError, read_eet, read_rcc
from dsrhn import atomic

MIN_PIXELS = 1_000_000
HASH_SIDE = 16  # difference hash of a 17 x 16 grey thumbnail: 256 bits
# at or below this many of the 256 bits, two photos are the same picture: a photo re-encoded or resized moves a
# few bits, the corpus's closest distinct pair is 63 apart (docs/data.md)
NEAR_DUPLICATE = 32
TEST_EVERY = 4  # every 4th photo of a package (by sha256) is held out
FORMAT = 1  # of the selection below and the manifest; a change re-writes the corpus


@dataclass(frozen=True)
class Selection:
    """Which files of a package are photos. `paths`: globs inside the unpacked package; `container`: "rcc"
    or "edj" to read the photos out of those files (`inner`: globs inside the bundle; for edj the largest
    JPEG of the file); `labelled`: the inner folder names are classes; `exclude`: globs left out (renders)."""

    package: str
    paths: tuple[str, ...]
    container: str = ""
    inner: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    labelled: str = ""  # a labelled set's name: its classes are the folders above each image
    largest_per_folder: bool = False  # a wallpaper shipped at several sizes: keep its largest file


_PLASMA_PHOTOS = (
    "BytheWater",
    "ColdRipple",
    "ColorfulCups",
    "DarkestHour",
    "EveningGlow",
    "FallenLeaf",
    "Grey",
    "Kite",
    "OneStandsOut",
    "Path",
    "summer_1am",
    "Volna",
)
_ENLIGHTENMENT_PHOTOS = (
    "Bamboo",
    "Foggy-Trees",
    "God-Rays",
    "Green-Maple",
    "Lichen-Branches",
    "Mountain",
    "Peaks",
    "Red-Maple",
    "Sea-of-Lanterns",
    "Snow-Trees",
    "Spruce-Needles",
    "Sunset-Clouds",
    "White-Flower",
    "Yellow-Flower",
)

SELECTIONS = (
    Selection("krank", ("usr/share/games/krank/levels/unera-backgrounds/*.jpg",)),  # underwater, public domain
    Selection(
        "gcompris-qt-data",
        ("usr/share/gcompris-qt/rcc/erase.rcc",),
        "rcc",
        ("gcompris/src/activities/erase/resource/*.webp",),
    ),  # 33 animals, 1920x1080
    Selection(
        "enlightenment-data",
        tuple(f"usr/share/enlightenment/data/backgrounds/{n}.edj" for n in _ENLIGHTENMENT_PHOTOS),
        "edj",
    ),
    Selection(
        "lomiri-wallpapers-16.04", ("usr/share/backgrounds/*.jpg",), exclude=("*analogpattern*", "*umang*")
    ),  # a texture and a render
    Selection("lomiri-wallpapers-20.04", ("usr/share/backgrounds/Kleiber*.jpg",)),  # the others are renders
    Selection("mate-backgrounds", ("usr/share/backgrounds/mate/nature/*.jpg",)),
    Selection(
        "plasma-workspace-wallpapers",
        tuple(f"usr/share/wallpapers/{n}/contents/images/*" for n in _PLASMA_PHOTOS),
        largest_per_folder=True,
    ),
    Selection("palapeli-data", ("usr/share/palapeli/collection/*.jpg",)),
    Selection(
        "libjs-jquery-backstretch",
        tuple(
            f"usr/share/doc/libjs-jquery-backstretch/examples/{n}.jpg"
            for n in ("coffee", "dome", "pot-holder", "sample1_1920", "sample2_1920")
        ),
    ),
    Selection("forensics-samples-files", ("usr/share/forensics-samples/original-files/pic*/*.[jJ][pP][gG]",)),
    Selection("libelementary-data", ("usr/share/elementary/images/insanely_huge_test_image.jpg",)),
    Selection(
        "gcompris-qt-data",
        ("usr/share/gcompris-qt/rcc/categorization.rcc",),
        "rcc",
        tuple(
            f"gcompris/src/activities/categorization/resource/images/{c}/*"
            for c in ("fishes", "monuments", "others", "renewable", "tools")
        ),
        labelled="gcompris-categorization",
    ),
)
PACKAGES = tuple(dict.fromkeys(s.package for s in SELECTIONS))


def _spec() -> str:
    """What the corpus is made by: this module's code and the container readers (selections, rules, hashes,
    licence matching). Any change re-writes the corpus on the next run instead of trusting the old one."""
    h = hashlib.sha256()
    for module in (__file__, os.path.join(os.path.dirname(__file__), "containers.py")):
        with open(module, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


SPEC = _spec()
MINI_PACKAGES = ("palapeli-data", "libjs-jquery-backstretch")  # ~10 MB: what set-up fetches for the tests
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


class FetchError(RuntimeError):
    """Some packages could not be fetched or unpacked; the message names each, the rest was written."""


@dataclass
class Candidate:
    package: str
    version: str
    source: str  # path inside the package (and inside its bundle, after '!')
    data: bytes
    labelled: str = ""
    label: str = ""
    info: dict = field(default_factory=dict)


# ---------------------------------------------------------------- image facts


def dhash(img) -> int:
    """256-bit difference hash: a (HASH_SIDE + 1) x HASH_SIDE grey thumbnail, one bit per horizontal
    neighbour pair (brighter on the left)."""
    from PIL import Image

    grey = np.asarray(img.convert("L").resize((HASH_SIDE + 1, HASH_SIDE), Image.BILINEAR), np.int16)
    bits = (grey[:, :-1] > grey[:, 1:]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


def image_facts(data: bytes) -> dict:
    """width, height, format and dhash of an encoded image (decoded in full: a truncated file raises)."""
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    fmt, (w, h) = img.format, img.size
    img.draft("RGB", (max(64, w // 8), max(64, h // 8)))  # JPEG: decode at 1/8 scale, enough for the hash
    img.load()
    return {"width": w, "height": h, "format": fmt, "dhash": f"{dhash(img.convert('RGB')):064x}"}


# ---------------------------------------------------------------- licences (Debian copyright files)


def parse_copyright(text: str) -> list[tuple[list[str], str]]:
    """A machine-readable (DEP-5) copyright file -> [(Files globs, licence)], in file order. A file that is
    not DEP-5 gives one catch-all entry with the licence its text states for images, else 'see copyright'."""
    paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    out = []
    for p in paragraphs:
        files = re.search(r"^Files:(.*(?:\n[ \t]+.*)*)", p, re.M)
        lic = re.search(r"^License:[ \t]*(\S.*)$", p, re.M)
        if files and lic:
            out.append((files.group(1).split(), lic.group(1).strip()))
    if not out:
        images = re.search(r"images:.*?License:\s*([^\n]+)", text, re.S | re.I)
        out.append((["*"], images.group(1).strip() if images else "see the package's copyright file"))
    return out


def licence_for(source: str, rules: list[tuple[list[str], str]]) -> str:
    """The licence of the last DEP-5 paragraph whose Files globs match the path (the DEP-5 rule: the last match
    wins), matched on any tail of the path (the source tree's paths are not the installed ones). A bundle's
    image also matches a glob naming one file with another extension: GCompris converts its .jpg/.png
    sources to .webp."""
    inner = source.split("!", 1)[-1]
    parts = inner.split("/")
    tails = ["/".join(parts[i:]) for i in range(len(parts))]
    best = rules[0][1] if rules and rules[0][0] == ["*"] else "see the package's copyright file"
    for globs, lic in rules:
        for g in globs:
            named = not any(ch in os.path.basename(g) for ch in "*?[")  # a glob naming one file
            if any(fnmatch.fnmatchcase(t, g) for t in tails):
                best = lic
            elif named and os.path.splitext(os.path.basename(g))[0] == os.path.splitext(parts[-1])[0]:
                best = lic  # the same file installed elsewhere, or converted to another format
    return best


# ---------------------------------------------------------------- apt


def _run(cmd: list[str], cwd: str | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode:
        output = (proc.stderr or proc.stdout).strip()[-400:]
        raise RuntimeError(f"`{' '.join(cmd)}` failed ({proc.returncode}): {output}")
    return proc.stdout


def download(package: str, debs: str) -> str:
    """The package's .deb in `debs`, downloaded by apt-get unless a complete one is there already."""
    for path in sorted(glob.glob(os.path.join(debs, f"{package}_*.deb"))):
        try:
            _run(["dpkg-deb", "--field", path, "Package"])
            return path
        except RuntimeError:
            os.remove(path)  # a partial download
    os.makedirs(debs, exist_ok=True)
    _run(["apt-get", "download", "-q", package], cwd=debs)
    found = sorted(glob.glob(os.path.join(debs, f"{package}_*.deb")))
    if not found:
        raise RuntimeError(f"apt-get download {package} wrote no .deb into {debs}")
    return found[-1]


def deb_version(path: str) -> str:
    return _run(["dpkg-deb", "--field", path, "Version"]).strip()


# ---------------------------------------------------------------- selection


def select(selection: Selection, tree: str, version: str) -> list[Candidate]:
    """The candidate photos of one selection in an unpacked package tree."""
    files = sorted({p for g in selection.paths for p in glob.glob(os.path.join(tree, g))})
    files = [p for p in files if not any(fnmatch.fnmatch(os.path.basename(p), x) for x in selection.exclude)]
    if selection.largest_per_folder:
        by_folder: dict[str, str] = {}
        for p in files:
            d = os.path.dirname(os.path.dirname(p))
            if d not in by_folder or _pixels_of(p) > _pixels_of(by_folder[d]):
                by_folder[d] = p
        files = sorted(by_folder.values())
    out = []
    for path in files:
        rel = os.path.relpath(path, tree)
        with open(path, "rb") as f:
            data = f.read()
        if selection.container == "rcc":
            for inner, blob in read_rcc(data, rel):
                selected = any(fnmatch.fnmatchcase(inner, g) for g in selection.inner)
                if selected and inner.lower().endswith(IMAGE_EXTENSIONS):
                    label = os.path.basename(os.path.dirname(inner)) if selection.labelled else ""
                    out.append(Candidate(selection.package, version, f"{rel}!{inner}", blob, selection.labelled, label))
        elif selection.container == "edj":
            jpegs = [(n, b) for n, b in read_eet(data, rel) if b[:3] == b"\xff\xd8\xff"]
            if not jpegs:
                raise ContainerError(f"{rel}: no JPEG image inside")
            best = max(jpegs, key=lambda nb: (_pixels(nb[1]), nb[0]))
            out.append(Candidate(selection.package, version, f"{rel}!{best[0]}", best[1]))
        else:
            out.append(Candidate(selection.package, version, rel, data))
    return out


def _pixels_of(path: str) -> int:
    with open(path, "rb") as f:
        return _pixels(f.read())


def _pixels(data: bytes) -> int:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size[0] * img.size[1]
    except Exception:
        return 0


def file_name(c: Candidate) -> str:
    """`<package>--<name>.<ext>` (a bundle's file: the bundle's name, then the image's)."""
    outer, _, inner = c.source.partition("!")
    if c.labelled:
        return os.path.basename(inner)
    if inner and outer.endswith(".edj"):
        base = os.path.splitext(os.path.basename(outer))[0] + ".jpg"
    elif inner:
        base = os.path.basename(inner)
    elif "/wallpapers/" in outer:  # plasma: <Name>/contents/images/<size>.<ext>
        base = outer.split("/wallpapers/")[1].split("/")[0] + os.path.splitext(outer)[1]
    else:
        base = os.path.basename(outer)
    return f"{c.package}--{re.sub(r'[^A-Za-z0-9._-]+', '_', base)}"


def choose(candidates: list[Candidate]) -> tuple[list[Candidate], list[dict]]:
    """Decode, check size, drop duplicates and near-duplicates; assign splits. Returns (kept, dropped)."""
    kept, dropped = [], []
    seen_sha: dict[str, str] = {}
    hashes: list[tuple[int, str]] = []
    for c in candidates:
        where = f"{c.package}:{c.source}"
        sha = hashlib.sha256(c.data).hexdigest()
        try:
            facts = image_facts(c.data)
        except Exception as e:
            dropped.append(
                {"package": c.package, "source": c.source, "reason": f"does not decode ({type(e).__name__}: {e})"}
            )
            continue
        c.info.update(facts, bytes=len(c.data), sha256=sha)
        if sha in seen_sha:
            dropped.append({"package": c.package, "source": c.source, "reason": f"the same bytes as {seen_sha[sha]}"})
            continue
        seen_sha[sha] = where
        if c.labelled:
            kept.append(c)
            continue
        if facts["width"] * facts["height"] < MIN_PIXELS:
            dropped.append(
                {
                    "package": c.package,
                    "source": c.source,
                    "reason": f"{facts['width']}x{facts['height']} is under {MIN_PIXELS / 1e6:g} megapixel",
                }
            )
            continue
        h = int(facts["dhash"], 16)
        near = next(((d, w) for d, w in ((hamming(h, o), w) for o, w in hashes) if d <= NEAR_DUPLICATE), None)
        if near:
            dropped.append(
                {
                    "package": c.package,
                    "source": c.source,
                    "reason": f"near-duplicate of {near[1]} (difference hash {near[0]} of {HASH_SIDE**2} bits apart)",
                }
            )
            continue
        hashes.append((h, where))
        kept.append(c)
    photos = [c for c in kept if not c.labelled]
    for package in dict.fromkeys(c.package for c in photos):
        mine = sorted((c for c in photos if c.package == package), key=lambda c: c.info["sha256"])
        for i, c in enumerate(mine):
            c.info["split"] = "test" if i % TEST_EVERY == TEST_EVERY - 1 else "train"
    for c in kept:
        if c.labelled:
            c.info["split"] = "labelled"
    return kept, dropped


def relative_path(c: Candidate) -> str:
    if c.labelled:
        return f"labelled/{c.labelled}/{c.label}/{file_name(c)}"
    return f"{c.info['split']}/{file_name(c)}"


# ---------------------------------------------------------------- the command


def manifest_path(root: str) -> str:
    return os.path.join(root, "manifest.json")


def up_to_date(root: str, packages: tuple[str, ...]) -> dict | None:
    """The manifest, when it describes these packages at this FORMAT and every file is there unchanged."""
    try:
        with open(manifest_path(root)) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    if manifest.get("spec") != SPEC or tuple(manifest.get("requested", ())) != tuple(packages):
        return None
    if manifest.get("failed"):
        return None
    for p in manifest["photos"]:
        path = os.path.join(root, p["file"])
        if not os.path.exists(path) or os.path.getsize(path) != p["bytes"]:
            return None
        with open(path, "rb") as f:
            if hashlib.sha256(f.read()).hexdigest() != p["sha256"]:
                return None
    return manifest


def fetch_corpus(root: str, packages: tuple[str, ...] = PACKAGES, log=print) -> dict:
    """Fetch, unpack, select, de-duplicate, split and write the corpus under `root`; returns the manifest.
    Raises FetchError naming the packages that failed, after writing everything else."""
    unknown = sorted(set(packages) - set(PACKAGES))
    if unknown:
        raise ValueError(f"unknown photo packages {unknown}; the corpus knows {list(PACKAGES)}")
    packages = tuple(p for p in PACKAGES if p in packages)  # selection order, whatever the request order
    existing = up_to_date(root, packages)
    if existing:
        log(f"photos: {root} is up to date ({len(existing['photos'])} photos); nothing to do")
        return existing
    t0 = time.time()
    debs = os.path.join(root, "debs")
    candidates: list[Candidate] = []
    failed: dict[str, str] = {}
    versions: dict[str, dict] = {}
    for package in packages:
        try:
            deb = download(package, debs)
            version = deb_version(deb)
            with tempfile.TemporaryDirectory(prefix=f"dsrhn-{package}-") as tree:
                _run(["dpkg-deb", "-x", deb, tree])
                copyright_files = glob.glob(os.path.join(tree, "usr/share/doc/*/copyright"))
                rules = (
                    parse_copyright(open(copyright_files[0], encoding="utf-8", errors="replace").read())
                    if copyright_files
                    else [(["*"], "unknown (no copyright file)")]
                )
                found = []
                for sel in (s for s in SELECTIONS if s.package == package):
                    found += select(sel, tree, version)
                for c in found:
                    c.info["licence"] = licence_for(c.source, rules)
            candidates += found
            versions[package] = {"version": version, "deb": os.path.basename(deb), "candidates": len(found)}
            log(f"photos: {package} {version}: {len(found)} candidate images")
        except Exception as e:  # one package failing never loses the others
            failed[package] = str(e)
            log(f"photos: {package} FAILED: {e}")
    kept, dropped = choose(candidates)
    manifest = write_corpus(root, packages, kept, dropped, versions, failed)
    counts = {s: sum(1 for p in manifest["photos"] if p["split"] == s) for s in ("train", "test", "labelled")}
    log(
        f"photos: {counts['train']} train + {counts['test']} test photos, {counts['labelled']} labelled images, "
        f"{len(dropped)} dropped ({time.time() - t0:.0f} s) -> {os.path.abspath(root)}"
    )
    if failed:
        raise FetchError(
            "could not fetch or unpack "
            + "; ".join(f"{p}: {e}" for p, e in failed.items())
            + f" (everything else was written to {root}; run again to retry)"
        )
    return manifest


def write_corpus(root: str, packages, kept: list[Candidate], dropped: list[dict], versions: dict, failed: dict) -> dict:
    """Write the photo folders and the manifest; each folder is swapped in whole (dsrhn.atomic.atomic_dir)."""
    os.makedirs(root, exist_ok=True)
    rows = []
    for c in kept:
        rel = relative_path(c)
        rows.append(
            {
                "file": rel,
                "package": c.package,
                "version": c.version,
                "source": c.source,
                **({"class": c.label} if c.labelled else {}),
                **c.info,
            }
        )
    for sub in ("train", "test", "labelled"):
        with atomic.atomic_dir(os.path.join(root, sub)) as work:
            for c, row in zip(kept, rows):
                if row["file"].startswith(sub + "/"):
                    dest = os.path.join(work, row["file"][len(sub) + 1 :])
                    os.makedirs(os.path.dirname(dest), exist_ok=True)
                    with open(dest, "wb") as f:
                        f.write(c.data)
    manifest = {
        "format": FORMAT,
        "spec": SPEC,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "requested": list(packages),
        "packages": versions,
        "failed": failed,
        "rules": {"min_pixels": MIN_PIXELS, "near_duplicate_bits": NEAR_DUPLICATE, "test_every": TEST_EVERY},
        "photos": rows,
        "dropped": dropped,
    }
    atomic.write_text(manifest_path(root), json.dumps(manifest, indent=1))
    return manifest


def remove_debs(root: str) -> None:
    shutil.rmtree(os.path.join(root, "debs"), ignore_errors=True)
