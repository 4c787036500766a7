"""build: a Dockerfile, one instruction at a time, each making one step of the image.

    FROM busybox           the starting image (or scratch: nothing)
    ENV, WORKDIR, CMD …    change the image's config only: an "empty layer" history entry
    COPY, ADD              files from the build context → a new layer
    RUN                    a real container of the image so far (the default security
                           profile, no network), its command run, its overlay upper dir
                           turned into a new layer (diff_layer), the container removed

After each instruction there is a complete image (config + manifest), the parent of the
next. The **build cache** maps (parent image, instruction, the files it copies) to the
image it made; a hit skips the work, which is why a second build prints "Using cache".
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import stat
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .. import trace
from ..atomic import file_lock, write_json_atomic
from ..errors import InvalidArgument, MinicontainerError
from ..image import dockerfile as df
from ..image.assemble import child_image, now_iso, record_image, store_layer_file
from ..image.layers import apply_layer, diff_layer
from ..image.reference import parse_reference
from ..image.store import Image, ImageStore
from .images import _resolve, find_image, open_store
from .paths import engine_root

DEFAULT_SHELL = ["/bin/sh", "-c"]


class BuildError(MinicontainerError):
    """A build step failed; nothing was tagged."""


@dataclass
class BuildResult:
    """What a build made: the image id, and per instruction whether it came from the cache."""

    image_id: str
    tag: str | None
    steps: list[dict] = field(default_factory=list)   # {"step", "instruction", "cached", "image_id", "layer"}
    trace: trace.Trace | None = None

    @property
    def cached(self) -> list[bool]:
        return [s["cached"] for s in self.steps]


@dataclass
class Stage:
    """The image being built so far, and what the instructions after FROM may use."""

    image: Image | None
    base_ref: str                      # the FROM reference, for the build containers' records
    config: dict
    args: dict[str, str]
    shell: list[str]


# ---- the build context ----------------------------------------------------------------

def read_dockerignore(context: Path) -> list[tuple[bool, str]]:
    """.dockerignore's patterns, in order: (excluded?, pattern); a ``!`` line re-includes."""
    path = context / ".dockerignore"
    if not path.exists():
        return []
    rules = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line[1:] if negate else line).lstrip("/")
        rules.append((not negate, pattern))
    return rules


def is_ignored(rel: str, rules: list[tuple[bool, str]]) -> bool:
    """Whether the context path ``rel`` is excluded: the last matching rule decides, and a
    rule on a directory covers everything under it."""
    ignored = False
    parts = rel.split("/")
    for exclude, pattern in rules:
        for i in range(1, len(parts) + 1):
            if _match(pattern, "/".join(parts[:i])):
                ignored = exclude
                break
    return ignored


def _match(pattern: str, path: str) -> bool:
    if "**" in pattern:
        regex = fnmatch.translate(pattern).replace(".*.*", ".*")
        import re
        return re.match(regex, path) is not None
    return fnmatch.fnmatchcase(path, pattern) and pattern.count("/") == path.count("/")


def context_sources(context: Path, pattern: str, line: int, rules: list[tuple[bool, str]]) -> list[Path]:
    """The context paths a COPY source names (wildcards allowed), never outside the context."""
    if pattern.startswith(("http://", "https://")):
        raise df.DockerfileError(f"Dockerfile:{line}: ADD from a URL is not supported (builds have no network): "
                                 "download the file into the build context and COPY it")
    rel = os.path.normpath(pattern.lstrip("/"))
    if rel == ".." or rel.startswith("../"):
        raise df.DockerfileError(f"Dockerfile:{line}: {pattern!r} is outside the build context: "
                                 "only files under the context directory can be copied")
    if any(c in rel for c in "*?["):
        parent = Path(os.path.dirname(rel))
        found = sorted(p for p in (context / parent).iterdir() if fnmatch.fnmatchcase(p.name, os.path.basename(rel))) \
            if (context / parent).is_dir() else []
    else:
        found = [context / rel] if os.path.lexists(context / rel) else []
    found = [p for p in found if rel == "." or not is_ignored(str(p.relative_to(context)), rules)]
    if not found:
        raise df.DockerfileError(f"Dockerfile:{line}: COPY source {pattern!r} not found in the build context "
                                 "(or excluded by .dockerignore)")
    return found


def digest_sources(context: Path, sources: list[Path], rules: list[tuple[bool, str]]) -> str:
    """One digest over the copied files' names, modes and contents: the cache key's part for COPY."""
    h = hashlib.sha256()
    for source in sources:
        for path in _walk(source):
            rel = str(path.relative_to(context))
            if path != source and is_ignored(rel, rules):
                continue
            st = os.lstat(path)
            h.update(f"{rel}\0{st.st_mode:o}\0".encode())
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
            elif stat.S_ISLNK(st.st_mode):
                h.update(os.readlink(path).encode())
    return "sha256:" + h.hexdigest()


def _walk(path: Path):
    yield path
    if path.is_dir() and not path.is_symlink():
        for child in sorted(path.iterdir()):
            yield from _walk(child)


# ---- the cache ---------------------------------------------------------------------------

def _cache_path() -> Path:
    return engine_root() / "build-cache.json"


def cache_key(parent: Image | None, instruction: str, extra: str = "") -> str:
    parent_id = parent.manifest_digest if parent is not None else "scratch"
    return hashlib.sha256(json.dumps([parent_id, instruction, extra]).encode()).hexdigest()


def cache_lookup(store: ImageStore, key: str) -> Image | None:
    """The image a step with this key made before, if all its blobs are still in the store."""
    try:
        digest = json.loads(_cache_path().read_text()).get(key)
    except (FileNotFoundError, ValueError):
        return None
    if not digest or not store.has_blob(digest):
        return None
    manifest = store.read_json(digest)
    blobs = [manifest["config"]["digest"], *(layer["digest"] for layer in manifest.get("layers", []))]
    if not all(store.has_blob(b) for b in blobs):
        return None   # garbage-collected since: build it again
    return Image(ref="", manifest_digest=digest, manifest=manifest, config=store.read_json(manifest["config"]["digest"]))


def cache_store(key: str, image: Image) -> None:
    with file_lock(engine_root() / ".lock"):
        try:
            cache = json.loads(_cache_path().read_text())
        except (FileNotFoundError, ValueError):
            cache = {}
        cache[key] = image.manifest_digest
        write_json_atomic(_cache_path(), cache, mode=0o600)


# ---- the steps ---------------------------------------------------------------------------

def _history(created_by: str, empty: bool) -> dict:
    entry = {"created": now_iso(), "created_by": created_by}
    if empty:
        entry["empty_layer"] = True
    return entry


def _nop(instruction: str) -> str:
    return f"/bin/sh -c #(nop)  {instruction}"


def _env_list(config: dict) -> list[str]:
    return list(config.get("Env") or [])


def _set_env(config: dict, name: str, value: str) -> None:
    env = [e for e in _env_list(config) if e.split("=", 1)[0] != name]
    config["Env"] = env + [f"{name}={value}"]


def _variables(stage: Stage) -> dict[str, str]:
    values = dict(stage.args)
    values.update(e.split("=", 1) for e in _env_list(stage.config) if "=" in e)
    return values


def apply_metadata(stage: Stage, ins: df.Instruction, text: str, build_args: dict[str, str]) -> None:
    """The instructions that change only the image config (and ARG, only the build's variables)."""
    c, kw = stage.config, ins.keyword
    if kw == "ENV":
        for name, value in df.key_values(ins, text):
            _set_env(c, name, value)
    elif kw == "ARG":
        name, eq, default = text.partition("=")
        stage.args[name.strip()] = build_args.get(name.strip(), default if eq else stage.args.get(name.strip(), ""))
    elif kw == "LABEL":
        c["Labels"] = {**(c.get("Labels") or {}), **dict(df.key_values(ins, text))}
    elif kw == "MAINTAINER":
        c["Labels"] = {**(c.get("Labels") or {}), "maintainer": text}
    elif kw == "WORKDIR":
        c["WorkingDir"] = os.path.normpath(os.path.join(c.get("WorkingDir") or "/", text))
    elif kw == "USER":
        c["User"] = text
    elif kw == "EXPOSE":
        ports = c.get("ExposedPorts") or {}
        for port in text.split():
            ports[port if "/" in port else f"{port}/tcp"] = {}
        c["ExposedPorts"] = ports
    elif kw == "VOLUME":
        paths = ins.exec_form if ins.exec_form is not None else text.split()
        c["Volumes"] = {**(c.get("Volumes") or {}), **{p: {} for p in paths}}
    elif kw == "STOPSIGNAL":
        c["StopSignal"] = text
    elif kw == "SHELL":
        if ins.exec_form is None:
            raise df.DockerfileError(f"Dockerfile:{ins.line}: SHELL needs the JSON form, e.g. SHELL [\"/bin/sh\", \"-c\"]")
        stage.shell = ins.exec_form
        c["Shell"] = ins.exec_form
    elif kw in ("CMD", "ENTRYPOINT"):
        value = ins.exec_form if ins.exec_form is not None else (stage.shell + [text] if text else [])
        c["Cmd" if kw == "CMD" else "Entrypoint"] = value
        if kw == "ENTRYPOINT":
            c["Cmd"] = None   # as Docker: a new ENTRYPOINT resets a CMD inherited from the base image


def run_step(store: ImageStore, stage: Stage, ins: df.Instruction, args: list[str],
             output: Callable[[str], None]) -> Image:
    """RUN: a build container of the image so far; its upper dir becomes the step's layer."""
    from .containers import remove_record
    from .run import RunOptions, _start, finish, prepare

    env = _env_list(stage.config) + [f"{k}={v}" for k, v in stage.args.items()
                                      if not any(e.startswith(k + "=") for e in _env_list(stage.config))]
    workdir = stage.config.get("WorkingDir") or "/"
    opts = RunOptions.parse(stage.base_ref, args, env=env, workdir=workdir, user=stage.config.get("User") or "")
    record, spec, cgroup = prepare(opts, image=stage.image)
    try:
        (record.dir / "upper" / workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)   # WORKDIR exists, as Docker's
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_w = os.dup(out_w)   # stdout and stderr in one stream, in the order written (two fds: each is closed once)
        null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        proc = None
        try:
            proc = _start(record, spec, (null, out_w, err_w), close_in_child=(out_r,))
        finally:
            for fd in (out_w, err_w, null):
                os.close(fd)
            if proc is None:
                os.close(out_r)
                finish(record, cgroup, None, remove=False)
        with os.fdopen(out_r, "rb") as stream:
            for line in stream:
                output(line.decode(errors="replace"))
        state, _ = finish(record, cgroup, proc, remove=False, wait_for_teardown=True)
        if state.exit_code != 0:
            shown = " ".join(args) if ins.exec_form is None else json.dumps(args)
            raise BuildError(f"Dockerfile:{ins.line}: the command '{shown}' returned a non-zero code: {state.exit_code}")
        fd, tmp = tempfile.mkstemp(prefix="build-", suffix=".tar.gz", dir=store.tmp)
        os.close(fd)
        layer = diff_layer(record.dir / "upper", tmp)
        store_layer_file(store, Path(tmp), layer)
    finally:
        remove_record(record)
    created_by = f"/bin/sh -c {ins.args}" if ins.exec_form is None else f"RUN {json.dumps(ins.exec_form)}"
    return child_image(store, stage.image, stage.config, [layer], [_history(created_by, False)])


def _image_stat(store: ImageStore, image: Image | None, rel: str) -> os.stat_result | None:
    """The metadata a path has in the image (the topmost layer that has it)."""
    if image is None or not rel:
        return None
    store.lower_dirs(image)   # unpacks the layers no container has used yet
    for diff_id in reversed(image.diff_ids):
        path = store.layer_dir(diff_id) / rel
        if os.path.lexists(path):
            return os.lstat(path)
    return None


def _lookup_id(store: ImageStore, image: Image | None, name: str, database: str, line: int) -> int:
    """--chown's NAME as a number, from the image's /etc/passwd or /etc/group."""
    if name.isdigit():
        return int(name)
    from .run import read_image_file

    lowers = store.lower_dirs(image) if image is not None else []
    for fields in read_image_file(lowers, f"etc/{database}"):
        if fields[0] == name and len(fields) > 2:
            return int(fields[2])
    raise df.DockerfileError(f"Dockerfile:{line}: --chown: no {'user' if database == 'passwd' else 'group'} "
                             f"{name!r} in the image's /etc/{database}: use a number")


def copy_step(store: ImageStore, stage: Stage, ins: df.Instruction, context: Path,
              rules: list[tuple[bool, str]], words: list[str]) -> Image:
    """COPY/ADD: the named context files, placed as they will appear, tarred into a new layer."""
    if "from" in ins.flags:
        raise df.DockerfileError(f"Dockerfile:{ins.line}: COPY --from (multi-stage builds) is not supported yet")
    if len(words) < 2:
        raise df.DockerfileError(f"Dockerfile:{ins.line}: {ins.keyword} needs a source and a destination")
    *sources, dest = words
    uid = gid = 0
    if ins.flags.get("chown"):
        user, _, group = ins.flags["chown"].partition(":")
        uid = _lookup_id(store, stage.image, user, "passwd", ins.line)
        gid = _lookup_id(store, stage.image, group, "group", ins.line) if group else uid
    paths = [p for s in sources for p in context_sources(context, s, ins.line, rules)]
    workdir = stage.config.get("WorkingDir") or "/"
    target = os.path.normpath(os.path.join(workdir, dest)).lstrip("/")
    existing = _image_stat(store, stage.image, target)
    into_dir = dest.endswith("/") or len(paths) > 1 or (existing is not None and stat.S_ISDIR(existing.st_mode))
    root = Path(tempfile.mkdtemp(prefix="layer-", dir=store.tmp))
    try:
        for path in paths:
            if ins.keyword == "ADD" and path.is_file() and _is_archive(path):
                _make_dirs(store, stage.image, root, target)
                apply_layer(path, root / target)   # ADD unpacks a local archive (gzip, zstd or plain tar)
                continue
            name = os.path.join(target, path.name) if into_dir and not path.is_dir() else target
            _make_dirs(store, stage.image, root, name if path.is_dir() else os.path.dirname(name))
            _copy_tree(context, path, root / name, rules, uid, gid, ins.flags.get("chown") is not None)
        fd, tmp = tempfile.mkstemp(prefix="build-", suffix=".tar.gz", dir=store.tmp)
        os.close(fd)
        layer = diff_layer(root, tmp)
        store_layer_file(store, Path(tmp), layer)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    created_by = _nop(f"{ins.keyword} {ins.text}")
    return child_image(store, stage.image, stage.config, [layer], [_history(created_by, False)])


def _is_archive(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(512)
    return head[:2] == b"\x1f\x8b" or head[:4] == b"\x28\xb5\x2f\xfd" or head[257:262] == b"ustar"


def _make_dirs(store: ImageStore, image: Image | None, root: Path, rel: str) -> None:
    """Create directory ``rel`` and those above it in the layer, with the metadata the image
    gives them (a parent tarred as 0755 root would otherwise replace, say, /tmp's 1777)."""
    parts = [p for p in rel.split("/") if p]
    for i in range(1, len(parts) + 1):
        sub = "/".join(parts[:i])
        path = root / sub
        if path.exists():
            continue
        path.mkdir()
        st = _image_stat(store, image, sub)
        if st is not None and stat.S_ISDIR(st.st_mode):
            os.chmod(path, stat.S_IMODE(st.st_mode))
            os.chown(path, st.st_uid, st.st_gid)
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        else:
            os.chmod(path, 0o755)


def _copy_tree(context: Path, source: Path, target: Path, rules: list[tuple[bool, str]],
               uid: int, gid: int, chown: bool) -> None:
    """Copy a file, symlink or directory's contents (what .dockerignore leaves), keeping modes."""
    st = os.lstat(source)
    if stat.S_ISDIR(st.st_mode):
        target.mkdir(exist_ok=True)
        os.chmod(target, stat.S_IMODE(st.st_mode))
        for child in sorted(source.iterdir()):
            if not is_ignored(str(child.relative_to(context)), rules):
                _copy_tree(context, child, target / child.name, rules, uid, gid, chown)
    elif stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(source), target)
    elif stat.S_ISREG(st.st_mode):
        shutil.copy2(source, target, follow_symlinks=False)
    else:
        return   # devices, fifos and sockets in a context are not copied, as Docker skips them
    os.lchown(target, uid if chown else 0, gid if chown else 0)


# ---- the build ---------------------------------------------------------------------------

def build(context: str | os.PathLike, *, dockerfile: str | None = None, tag: str | None = None,
          build_args: dict[str, str] | None = None, no_cache: bool = False,
          output: Callable[[str], None] | None = None) -> BuildResult:
    """Build the Dockerfile in ``context`` (or ``dockerfile``); tag the result if ``tag`` is given."""
    output = output or (lambda text: (sys.stdout.write(text), sys.stdout.flush()))
    context = Path(context).resolve()
    if not context.is_dir():
        raise InvalidArgument(f"build context {str(context)!r} is not a directory: give the directory holding the files")
    path = Path(dockerfile) if dockerfile else context / "Dockerfile"
    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidArgument(f"cannot read the Dockerfile {str(path)!r}: {exc.strerror}: give its path with -f") from None
    instructions = df.parse(text)
    target = str(parse_reference(tag)) if tag else None   # a bad tag fails before any work
    build_args = dict(build_args or {})
    rules = read_dockerignore(context)
    store = open_store()
    result = BuildResult(image_id="", tag=target)
    global_args: dict[str, str] = {}
    stage: Stage | None = None
    with trace.recording() as tr:
        for number, ins in enumerate(instructions, 1):
            variables = _variables(stage) if stage else dict(global_args)
            text = df.substitute(ins.args, variables) if ins.keyword in df.SUBSTITUTED else ins.args
            output(f"Step {number}/{len(instructions)} : {ins}\n")
            if ins.keyword == "ARG" and stage is None:
                name, eq, default = text.partition("=")
                global_args[name.strip()] = build_args.get(name.strip(), default)
                continue
            if ins.keyword == "FROM":
                stage = _from(store, ins, text, global_args)
                output(f" ---> {stage.image.id[7:19] if stage.image else 'scratch'}\n")
                continue
            words = df.split_words(text, ins.line) if ins.keyword in ("COPY", "ADD") and ins.exec_form is None \
                else (ins.exec_form or [])
            extra = ""
            if "from" in ins.flags and ins.keyword == "COPY":
                raise df.DockerfileError(f"Dockerfile:{ins.line}: COPY --from (multi-stage builds) is not supported "
                                         "yet: build the other stage as its own image and COPY its files from the context")
            if ins.keyword in ("COPY", "ADD"):
                extra = digest_sources(context, [p for s in words[:-1] for p in context_sources(context, s, ins.line, rules)],
                                       rules) + json.dumps(ins.flags, sort_keys=True)
            if ins.keyword == "RUN":   # a build arg's value changes what RUN does
                extra = json.dumps(sorted(stage.args.items()))
            key = cache_key(stage.image, f"{ins.keyword} {text}", extra)
            hit = None if no_cache else cache_lookup(store, key)
            if hit is not None:
                if ins.keyword in ("ARG", "SHELL"):
                    apply_metadata(stage, ins, text, build_args)
                stage.image, stage.config = hit, dict(hit.config.get("config") or {})
                output(" ---> Using cache\n")
            else:
                stage.image = _step(store, stage, ins, text, words, context, rules, build_args, output)
                cache_store(key, stage.image)
            output(f" ---> {stage.image.id[7:19]}\n")
            result.steps.append({"step": number, "instruction": str(ins), "cached": hit is not None,
                                 "image_id": stage.image.id,
                                 "layer": ins.keyword in ("RUN", "COPY", "ADD")})
        if stage is None or stage.image is None:
            raise BuildError("the Dockerfile made no image (FROM scratch and nothing else): add an instruction")
        record_image(store, stage.image, target)
    result.image_id, result.trace = stage.image.id, tr
    output(f"Successfully built {stage.image.id[7:19]}\n")
    if target:
        output(f"Successfully tagged {parse_reference(target).familiar}\n")
    return result


def _from(store: ImageStore, ins: df.Instruction, text: str, global_args: dict[str, str]) -> Stage:
    ref = text.split()[0]
    if ref == "scratch":
        return Stage(None, "busybox", {}, {}, list(DEFAULT_SHELL))
    try:
        found = find_image(store, ref)
    except MinicontainerError:
        raise df.DockerfileError(f"Dockerfile:{ins.line}: FROM {ref}: no such image here: pull or load it first "
                                 "(builds have no network)") from None
    image = _resolve(store, found, ref)
    return Stage(image, ref, dict(image.config.get("config") or {}), {},
                 list(image.config.get("config", {}).get("Shell") or DEFAULT_SHELL))


def _step(store: ImageStore, stage: Stage, ins: df.Instruction, text: str, words: list[str], context: Path,
          rules: list[tuple[bool, str]], build_args: dict[str, str], output: Callable[[str], None]) -> Image:
    if ins.keyword == "RUN":
        args = ins.exec_form if ins.exec_form is not None else stage.shell + [ins.args]
        output(" ---> Running in a build container\n")
        return run_step(store, stage, ins, args, output)
    if ins.keyword in ("COPY", "ADD"):
        return copy_step(store, stage, ins, context, rules, words)
    apply_metadata(stage, ins, text, build_args)
    return child_image(store, stage.image, stage.config, [], [_history(_nop(f"{ins.keyword} {text}"), True)])
