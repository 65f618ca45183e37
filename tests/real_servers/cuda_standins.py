#!/usr/bin/env python3
"""Link-only stand-ins for the CUDA libraries PyPI's torch wheel is linked against.

    cuda_standins.py TORCH_LIB_DIR OUT_DIR

PyPI has no CPU-only torch: its `torch` wheel is a CUDA build whose shared libraries name
CUDA libraries (libcudart, libcublas, NCCL, ...) that the nvidia-* wheels would bring, 2-3 GB
of them. On a CPU-only machine nothing in them is ever called (vLLM's CPU backend and
transformers on `--device cpu` never touch CUDA), but the dynamic loader still needs every
library and every symbol to exist. This writes, for each library some torch library needs
and neither torch nor the system has, a tiny shared object that defines every symbol torch
imports from it (with the symbol versions torch asks for), each one returning an error code
(100, "no device") or, for the functions that name an error, a short message.

Reads ELF dynamic sections with binutils' readelf; builds with gcc. Prints what it built.
"""
import collections
import os
import re
import subprocess
import sys

SYSTEM_DIRS = ["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib"]
# Version tags that do not spell the library's soname.
VERSION_OWNER = {"NVSHMEM": "libnvshmem_host.so.3"}
RETURNS_TEXT = re.compile(r"Get(Error|Status)(String|Name|Str)")


def readelf(*args):
    return subprocess.run(["readelf", *args], capture_output=True, text=True, check=False).stdout


def dynamic_symbols(path):
    """(defined?, weak?, name, version or None) for each dynamic symbol of `path`."""
    for line in readelf("--dyn-syms", "-W", path).splitlines():
        f = line.split()
        if len(f) < 8 or not f[0].rstrip(":").isdigit():
            continue
        name, _, version = f[7].partition("@")
        yield f[6] != "UND", f[4] == "WEAK", name, version.lstrip("@") or None


def needed(path):
    return re.findall(r"\(NEEDED\).*\[(.+?)\]", readelf("-d", path))


def on_system(soname):
    return any(os.path.exists(os.path.join(d, soname)) for d in SYSTEM_DIRS)


def main():
    lib_dir, out = sys.argv[1], sys.argv[2]
    pkg_dir = os.path.dirname(lib_dir)
    torch_libs = [os.path.join(lib_dir, f) for f in os.listdir(lib_dir) if ".so" in f]
    torch_libs += [os.path.join(pkg_dir, f) for f in os.listdir(pkg_dir) if f.endswith(".so")]
    present = set(os.listdir(lib_dir))
    missing = sorted({n for lib in torch_libs for n in needed(lib) if n not in present and not on_system(n)})

    defined = set()
    system_libs = [os.path.join(d, f) for d in SYSTEM_DIRS[:1] for f in
                   ("libc.so.6", "libm.so.6", "libstdc++.so.6", "libgcc_s.so.1", "libpthread.so.0",
                    "libdl.so.2", "librt.so.1", "ld-linux-x86-64.so.2") if os.path.exists(os.path.join(d, f))]
    for lib in torch_libs + system_libs:
        defined.update(name for is_def, _, name, _ in dynamic_symbols(lib) if is_def)
    wanted = collections.defaultdict(set)   # version tag -> symbols
    unversioned = set()
    for lib in torch_libs:
        for is_def, weak, name, version in dynamic_symbols(lib):
            if is_def or weak or name in defined:
                continue
            (wanted[version].add(name) if version else unversioned.add(name))

    os.makedirs(out, exist_ok=True)
    for soname in missing:
        versions = [v for v in wanted if v == soname or VERSION_OWNER.get(v) == soname]
        symbols = set().union(*(wanted[v] for v in versions)) if versions else set()
        if soname.startswith("libcudart.so"):
            symbols |= unversioned   # the runtime's unversioned entry points
        asm = [".text"]
        for s in sorted(symbols):
            body = ["lea .Lwhy(%rip), %rax"] if RETURNS_TEXT.search(s) else ["mov $100, %eax"]
            asm += [f".globl {s}", f".type {s},@function", f"{s}:", *("  " + b for b in body), "  ret"]
        asm += [".section .rodata", '.Lwhy: .asciz "no CUDA here: a link-only stand-in"']
        src, script = os.path.join(out, soname + ".s"), os.path.join(out, soname + ".map")
        with open(src, "w") as f:
            f.write("\n".join(asm) + "\n")
        with open(script, "w") as f:
            for v in versions:
                f.write(f"{v} {{\n  global:\n" + "".join(f"    {s};\n" for s in sorted(wanted[v])) + "};\n")
            if not versions:
                f.write("STANDIN { };\n")
        subprocess.run(["gcc", "-shared", "-nostdlib", "-o", os.path.join(out, soname), src,
                        f"-Wl,-soname,{soname}", f"-Wl,--version-script,{script}"], check=True)
        print(f"{soname}: {len(symbols)} symbols")


if __name__ == "__main__":
    main()
