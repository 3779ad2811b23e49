#!/usr/bin/env python3
"""Builds a single-layer OCI image archive without a container engine.

The layer holds the files given on the command line; the archive is an OCI
image layout (oci-layout, index.json, blobs/sha256/...) that `ctr images
import`, `docker load` and `skopeo copy oci-archive:` read. Reproducible: file
order, owners, modes and times are fixed, so the same inputs give the same
digest.

    oci_image.py --name docker.io/library/busybox:local --out busybox.tar \\
        --file /usr/bin/busybox:/bin/busybox --symlink /bin/sh:busybox \\
        --entrypoint /bin/sh --user 65534:65534
"""

import argparse
import hashlib
import io
import json
import os
import sys
import tarfile

# 2000-01-01T00:00:00Z: a fixed time for every entry (reproducible; some tools
# treat 0 as "unset").
EPOCH = 946684800


def split(value, what):
    if ":" not in value:
        sys.exit(f"oci_image.py: --{what} takes two parts separated by ':', got {value!r}")
    first, second = value.split(":", 1)
    return first, second


def parse_pair(value, what):
    """SOURCE:TARGET of --file."""
    source, target = split(value, what)
    return source, target.lstrip("/")


def layer_bytes(files, symlinks, dirs, texts):
    """An uncompressed tar of the image's file system, entries in name order."""
    entries = {}
    for source, target in files:
        if not os.path.isfile(source):
            sys.exit(f"oci_image.py: {source} is not a file")
        entries[target] = ("file", source)
    for target, link in symlinks:
        entries[target] = ("symlink", link)
    for target, mode in dirs:
        entries[target] = ("dir", mode)
    for target, content in texts:
        entries[target] = ("text", content)
    # Parent directories of everything, so that the tar extracts anywhere.
    for name in list(entries):
        parent = os.path.dirname(name)
        while parent and parent not in entries:
            entries[parent] = ("dir", 0o755)
            parent = os.path.dirname(parent)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(entries):
            kind, arg = entries[name]
            info = tarfile.TarInfo(name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = EPOCH, 0, 0, "", ""
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, arg
                tar.addfile(info)
            elif kind == "symlink":
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, arg, 0o777
                tar.addfile(info)
            elif kind == "text":
                data = arg.encode()
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
            else:
                with open(arg, "rb") as f:
                    data = f.read()
                executable = os.stat(arg).st_mode & 0o111
                info.size, info.mode = len(data), 0o755 if executable else 0o644
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def blob(data):
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True, help="full image reference, e.g. docker.io/library/x:1.0")
    p.add_argument("--out", required=True, help="archive to write")
    p.add_argument("--file", action="append", default=[], help="SOURCE:TARGET, a file into the image")
    p.add_argument("--symlink", action="append", default=[], help="TARGET:LINK, a symbolic link")
    p.add_argument("--dir", action="append", default=[], help="TARGET[:MODE], an (empty) directory, mode octal")
    p.add_argument("--text", action="append", default=[], help="TARGET:CONTENT, a small text file")
    p.add_argument("--entrypoint", action="append", default=[], help="entrypoint, one argument per flag")
    p.add_argument("--cmd", action="append", default=[], help="default arguments, one per flag")
    p.add_argument("--env", action="append", default=[], help="KEY=VALUE")
    p.add_argument("--user", default="", help="UID:GID the process runs as")
    p.add_argument("--label", action="append", default=[], help="KEY=VALUE, an OCI label")
    args = p.parse_args()

    files = [parse_pair(f, "file") for f in args.file]
    # TARGET:VALUE pairs: the image path first.
    symlinks = [(target.lstrip("/"), link) for target, link in (split(s, "symlink") for s in args.symlink)]
    texts = [(target.lstrip("/"), content.replace("\\n", "\n")) for target, content in (split(t, "text") for t in args.text)]
    dirs = []
    for d in args.dir:
        target, _, mode = d.partition(":")
        dirs.append((target.lstrip("/"), int(mode or "755", 8)))

    layer_digest, layer = blob(layer_bytes(files, symlinks, dirs, texts))
    labels = dict(label.split("=", 1) for label in args.label)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": args.user,
            "Entrypoint": args.entrypoint or None,
            "Cmd": args.cmd or None,
            "Env": args.env or ["PATH=/usr/local/bin:/usr/bin:/bin"],
            "Labels": labels or None,
        },
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }
    config["config"] = {k: v for k, v in config["config"].items() if v}
    config_digest, config_bytes = blob(json.dumps(config, sort_keys=True, separators=(",", ":")).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": len(config_bytes)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": len(layer)}],
        "annotations": {k: v for k, v in labels.items() if k.startswith("org.opencontainers.image.")},
    }
    manifest_digest, manifest_bytes = blob(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode())
    tag = args.name.rsplit(":", 1)[1] if ":" in args.name.rsplit("/", 1)[-1] else "latest"
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": len(manifest_bytes),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": args.name, "org.opencontainers.image.ref.name": tag},
        }],
    }
    members = [
        ("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode()),
        ("index.json", json.dumps(index, sort_keys=True, separators=(",", ":")).encode()),
    ]
    for digest, data in sorted({layer_digest: layer, config_digest: config_bytes, manifest_digest: manifest_bytes}.items()):
        members.append(("blobs/sha256/" + digest.split(":", 1)[1], data))
    with tarfile.open(args.out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, EPOCH
            tar.addfile(info)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, EPOCH
            tar.addfile(info, io.BytesIO(data))
    print(json.dumps({"name": args.name, "digest": manifest_digest, "layer_bytes": len(layer), "archive": args.out}))


if __name__ == "__main__":
    main()
