"""aigc against llama.cpp on this CPU: prompt processing and decode tokens/s on the same weights, side by side.

Random weights with the shapes of SmolLM2-135M (Llama) and Qwen2.5-0.5B (Qwen2) are saved as Hugging Face
folders in bfloat16 (``save_hf_folder`` of ``benchmarks/pretrained.py``), imported into aigc runs as float32
(``import_model(..., dtype="fp32")``) and exported from those runs to GGUF with aigc's own exporter
(``export_gguf``) as f32, bf16 and q8_0 (and f16 where the CPU has no bfloat16 instructions). llama.cpp's
own tools are built from the ``vendor/llama.cpp`` of the llama-cpp-python sdist into a cache folder when
missing (several minutes on 2 cores; started first, while the models are made). For each shape:

1. Batch 1, both engines on 2 threads, greedy: llama.cpp's ``llama-bench -m FILE -t 2 -p 128 -n 128``
   (its defaults otherwise: 5 repetitions, mmap, its own batch sizes) against aigc's imported run loaded as
   ``aigc generate`` loads it, at float32, bfloat16 and with ``--quantize int8`` (over bfloat16, as a default
   import is loaded; ``aigc serve --quantize int8`` below is over the float32 run). Pairs: fp32 / f32,
   bf16 / bf16 (and / f16), int8 / q8_0. Prompt processing: a 128-token random prompt's prefill (aigc: time
   to the first token, median of 3); decode: 128 new tokens, no early stop (aigc: after a 128-token prompt;
   llama-bench's tg128 starts from an empty context, a few percent in its favour on these short contexts).
   Beside each rate, its memory-bandwidth floor: the weight bytes one decode step reads (aigc: every matrix
   product's weights, int8 ones with their scales; llama.cpp: the GGUF's tensor bytes, the tied embedding
   read once as the output matrix) over this machine's read rate measured in the same run.
2. Batch 8: aigc decoding 8 random 128-token prompts at once against ``llama-batched-bench -npp 128
   -ntg 128 -npl 8 -t 2`` (8 sequences of 128 prompt and 128 new tokens each); total tokens/s.
3. Servers: ``aigc serve RUN`` (and ``--quantize int8``) against ``llama-server -m FILE --parallel 16 -t 2``
   (f32, and q8_0), 16 concurrent clients each asking /v1/completions for 64 greedy tokens; output tokens/s.

Each table has aigc twice: on its own PyTorch engine (``--backend torch``, the default), and with
``--backend llamacpp`` (llama.cpp's kernels through llama-cpp-python computing the logits of the same
run, exported by aigc to f32 or q8_0; aigc's own sampling, stops and scheduler around them). The
llama.cpp tools of the peer column are measured once per file and shown beside both.

llama.cpp is built without AMX (``-mno-amx-*``): its AMX q8_0 kernels die of SIGILL on such CPUs (see
``NO_AMX``), so on them its q8_0 prompt processing runs on AVX-512 (VNNI) rather than on tiles.

Targets (the issue's): aigc decode at least 0.9x llama.cpp at the same precision on both shapes, and
prompt processing at least 0.9x at every precision (batch 1; each row says met or missed, with the ratio;
the summary counts each backend apart).

    python benchmarks/llamacpp.py [--shapes smollm2 qwen2.5] [--new-tokens 128] [--work DIR]
                                  [--llamacpp-dir DIR]    # or AIGC_LLAMACPP_DIR; default .cache/llamacpp
    python benchmarks/llamacpp.py --quick    # smoke run: SmolLM2's shape, 32 new tokens, batch 1 only
    python benchmarks/llamacpp.py --no-servers   # batch 1 and 8 only
    python benchmarks/llamacpp.py --servers-only # the servers' table only
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import torch
from generate import ours, read_bandwidth
from loadwatch import LoadWatch
from pretrained import PROMPT_TOKENS, SHAPES, bytes_per_token, our_generator, save_hf_folder
from serve import free_port

from aigc.generate.llamacpp import LlamaCppEngine
from aigc.tasks import load_generator

ROOT = Path(__file__).resolve().parents[1]
LLAMA_CPP_PYTHON = "0.3.36"  # the llama-cpp-python sdist whose vendor/llama.cpp is built
SDIST = f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
SDIST_COPIES = [Path("/tmp/dl") / SDIST]  # copies already on this machine, used before downloading
SOURCE_COPIES = [Path("/tmp/lsrc") / f"llama_cpp_python-{LLAMA_CPP_PYTHON}" / "vendor" / "llama.cpp"]
CMAKE_OPTIONS = ["-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                 "-DLLAMA_BUILD_EXAMPLES=OFF"]
# Without AMX: with -march=native on a CPU that has it, every q8_0 matrix product dies of SIGILL on its first
# tile instruction (``tilezero`` in ``tinygemm_kernel_amx``), while a small program's own tiles work on the same
# machine; ggml-org/llama.cpp PR #26954 describes such a crash (the tile configuration, loaded from a stack copy
# the compiler may drop, and per-thread AMX permission). GCC's explicit -mno-* wins over -march=native whatever
# their order; llama.cpp then takes its AVX-512/VNNI kernels, with weight repacking.
NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
if platform.machine() in ("x86_64", "AMD64"):
    CMAKE_OPTIONS += [f"-DCMAKE_C_FLAGS={NO_AMX}", f"-DCMAKE_CXX_FLAGS={NO_AMX}"]
TOOLS = ["llama-bench", "llama-batched-bench", "llama-server"]  # the build's targets
SHAPE_NAMES = ("smollm2", "qwen2.5")
THREADS = 2
TARGET = 0.9  # aigc at least 0.9x llama.cpp
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


# ---------------------------------------------------------------- llama.cpp's tools: found, or built once


def llamacpp_dir(given: Path | None) -> Path:
    """Where llama.cpp is built: ``--llamacpp-dir``, else ``$AIGC_LLAMACPP_DIR``, else ``.cache/llamacpp``."""
    return given or Path(os.environ.get("AIGC_LLAMACPP_DIR") or ROOT / ".cache" / "llamacpp")


def tool(cache: Path, name: str) -> Path:
    return cache / "build" / "bin" / name


def llamacpp_source(cache: Path) -> Path:
    """llama.cpp's source tree: already extracted (here or in the cache), else extracted from the sdist,
    which ``pip download`` fetches when no copy of it lies on this machine."""
    extracted = cache / "src" / f"llama_cpp_python-{LLAMA_CPP_PYTHON}" / "vendor" / "llama.cpp"
    for candidate in (extracted, *SOURCE_COPIES):
        if (candidate / "CMakeLists.txt").is_file():
            return candidate
    sdist = next((path for path in SDIST_COPIES if path.is_file()), None)
    if sdist is None:
        sdist = download_sdist(cache / "dl")
    with tarfile.open(sdist) as archive:
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python >= 3.10.12 / 3.11.4
        archive.extractall(cache / "src", **safe)
    return extracted


def download_sdist(folder: Path) -> Path:
    """The sdist's file from PyPI (its simple index, in JSON), checked against the index's SHA-256. Not
    ``pip download``: that prepares the sdist's metadata, building each of its build dependencies from source."""
    import hashlib
    import urllib.request

    index = urllib.request.Request("https://pypi.org/simple/llama-cpp-python/",
                                   headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(index) as answer:
        entry = next(file for file in json.load(answer)["files"] if file["filename"] == SDIST)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SDIST
    print(f"downloading {entry['url']} ...", flush=True)
    urllib.request.urlretrieve(entry["url"], path)
    if hashlib.sha256(path.read_bytes()).hexdigest() != entry["hashes"]["sha256"]:
        path.unlink()
        raise SystemExit(f"{SDIST} does not match PyPI's SHA-256; run again")
    return path


def built_with(cache: Path) -> Path:
    """The options the build in ``cache`` was made with, written once it succeeded."""
    return cache / "build" / "aigc-cmake-options.txt"


def start_build(cache: Path) -> subprocess.Popen | None:
    """Configure llama.cpp and start building its tools in the background (log: ``build.log``); None when built
    already with these options."""
    options = "\n".join(CMAKE_OPTIONS)
    stamp = built_with(cache)
    if all(tool(cache, name).is_file() for name in TOOLS) and stamp.is_file() and stamp.read_text() == options:
        return None
    source, build = llamacpp_source(cache), cache / "build"
    cmake_cache = build / "CMakeCache.txt"
    if cmake_cache.is_file() and f"CMAKE_HOME_DIRECTORY:INTERNAL={source}\n" not in cmake_cache.read_text():
        shutil.rmtree(build)  # configured from a source tree that is gone or elsewhere
    stamp.unlink(missing_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    print(f"building llama.cpp from {source} into {build} (log: {cache / 'build.log'}) ...", flush=True)
    log = open(cache / "build.log", "w")
    subprocess.run(["cmake", "-S", str(source), "-B", str(build), *CMAKE_OPTIONS], stdout=log, stderr=log, check=True)
    return subprocess.Popen(["cmake", "--build", str(build), "-j", "2", "--target", *TOOLS],
                            stdout=log, stderr=subprocess.STDOUT)


def finish_build(build: subprocess.Popen | None, cache: Path) -> None:
    """Wait for the build ``start_build`` started, if any; stop with its log's tail when it failed."""
    if build is None:
        return
    started = time.perf_counter()
    if build.wait() != 0:
        tail = (cache / "build.log").read_text().splitlines()[-30:]
        raise SystemExit("building llama.cpp failed:\n" + "\n".join(tail))
    built_with(cache).write_text("\n".join(CMAKE_OPTIONS))
    print(f"llama.cpp built (waited {time.perf_counter() - started:.0f} s for it)", flush=True)


def llamacpp_version(cache: Path) -> str:
    """``llama-bench --version``: "version: 0.5.0-dev (build 1, commit 0c1e570); built with GNU 12.2.0 for ..."."""
    done = subprocess.run([str(tool(cache, "llama-bench")), "--version"], capture_output=True, text=True)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    return "; ".join(lines[:2]) or "unknown"


# ---------------------------------------------------------------- the models: HF folder -> aigc run -> GGUF files


@dataclass
class Model:
    key: str
    name: str
    vocab: int
    run_dir: Path
    gguf: dict[str, Path] = field(default_factory=dict)  # type -> file


def make_model(key: str, work: Path, types: list[str]) -> Model:
    """A random HF folder of the shape ``key``, imported as a float32 run and exported to GGUF in ``types``.

    What a previous run left in ``work`` (``--work DIR``) is used again: the run, and each finished export."""
    from aigc.pretrained import import_model
    from aigc.pretrained.gguf_export import export_gguf

    name, model_type, template, shape = SHAPES[key]
    folder, run_dir = work / "hf" / key, work / "runs" / key
    if not run_dir.is_dir():  # the import renames a finished run into place
        shutil.rmtree(folder, ignore_errors=True)
        save_hf_folder(folder, model_type, template, shape)
        import_model(folder, [f"run.dir={run_dir}"], dtype="fp32")
        shutil.rmtree(folder)  # the HF folder is not needed any more
    model = Model(key, name, shape["vocab_size"], run_dir)
    for kind in types:
        out_dir = work / "gguf" / f"{key}-{kind}"
        done = sorted(out_dir.glob("*.gguf"))  # the export too
        model.gguf[kind] = done[0] if done else export_gguf(run_dir, out_dir, kind).gguf_file
    return model


def gguf_bytes_per_token(path: Path) -> int:
    """What one llama.cpp decode step reads: every tensor once, except an untied embedding (one row is looked up)."""
    import gguf

    tensors = gguf.GGUFReader(path).tensors
    tied = not any(t.name == "output.weight" for t in tensors)
    return sum(int(t.n_bytes) for t in tensors if tied or t.name != "token_embd.weight")


# ---------------------------------------------------------------- measurements


@dataclass
class Speed:
    """One engine at one precision: prompt and decode tokens/s, and the bytes a decode step reads."""

    prompt: float | None = None
    decode: float | None = None
    step_bytes: int | None = None
    error: str | None = None


def run_tool(command: list[str], timeout_s: float = 1800) -> tuple[subprocess.CompletedProcess, str | None]:
    """The finished tool, and None, or llama.cpp's own last error lines when it failed."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode == 0:
        return done, None
    shown = " ".join(Path(part).name if part.startswith("/") else part for part in command)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    return done, f"`{shown}` exited {done.returncode}: " + " | ".join(lines[-8:])


def llama_bench(cache: Path, gguf_file: Path, new_tokens: int) -> tuple[Speed, dict]:
    """llama-bench's pp128 and tg<new_tokens> at batch 1 (its mean over its repetitions), and its JSON record."""
    done, error = run_tool([str(tool(cache, "llama-bench")), "-m", str(gguf_file), "-t", str(THREADS),
                            "-p", str(PROMPT_TOKENS), "-n", str(new_tokens), "-o", "json"])
    speed = Speed(step_bytes=gguf_bytes_per_token(gguf_file), error=error)
    if error:
        return speed, {}
    tests = json.loads(done.stdout)
    for test in tests:
        if test["n_gen"] == 0:
            speed.prompt = test["avg_ts"]
        elif test["n_prompt"] == 0:
            speed.decode = test["avg_ts"]
    return speed, tests[0]


def llama_batched(cache: Path, gguf_file: Path, batch: int, new_tokens: int) -> Speed:
    """llama-batched-bench: ``batch`` sequences of a 128-token prompt and ``new_tokens`` new ones, total tokens/s."""
    context = batch * (PROMPT_TOKENS + new_tokens) + 256
    done, error = run_tool([str(tool(cache, "llama-batched-bench")), "-m", str(gguf_file), "-t", str(THREADS),
                            "-c", str(context), "-npp", str(PROMPT_TOKENS), "-ntg", str(new_tokens),
                            "-npl", str(batch), "--output-format", "jsonl"])
    speed = Speed(step_bytes=gguf_bytes_per_token(gguf_file), error=error)
    records = [json.loads(line) for line in (done.stdout + "\n" + done.stderr).splitlines() if line.startswith("{")]
    if records:
        speed.prompt, speed.decode = records[-1]["speed_pp"], records[-1]["speed_tg"]
    elif not error:
        speed.error = "llama-batched-bench printed no result: " + done.stdout[-300:]
    return speed


def load_ours(run_dir: Path, dtype: str, backend: str = "torch"):
    """The float32 run as ``aigc generate`` loads it at ``dtype``: fp32; bf16 (cast: as a default import, which
    keeps the checkpoint's bf16, loads); int8 over that bf16 model, as in ``benchmarks/pretrained.py`` (the same
    int8 weights and scales, the weights being bf16 values; int8 over float32 activations decodes up to 20% slower).
    ``backend="llamacpp"``: as ``aigc generate --backend llamacpp`` loads it (fp32: its f32 GGUF; int8: q8_0).
    """
    if backend == "llamacpp":
        return load_generator(run_dir, quantize="int8" if dtype == "int8" else None, backend=backend)
    generator = our_generator(run_dir, dtype)
    if dtype in ("bf16", "int8"):
        generator.model.to(torch.bfloat16)  # int8 weights stay int8, their scales bf16
    return generator


def our_speed(generator, vocab: int, batch: int, new_tokens: int) -> Speed:
    """aigc's prompt tokens/s (prefill to the first token, median of 3) and decode tokens/s after it."""
    torch.manual_seed(batch)
    prompts = torch.randint(0, vocab, (batch, PROMPT_TOKENS)).tolist()
    ours(generator.engine, prompts, 4)  # warm-up
    prefill = statistics.median(ours(generator.engine, prompts, 1)[0] for _ in range(3))
    _, decode = ours(generator.engine, prompts, new_tokens)
    step_bytes = (gguf_bytes_per_token(generator.model.gguf_file) if isinstance(generator.engine, LlamaCppEngine)
                  else bytes_per_token(generator.model))
    return Speed(batch * PROMPT_TOKENS / prefill, batch * (new_tokens - 1) / decode, step_bytes)


# ---------------------------------------------------------------- the tables


BACKEND_PAIRS = [("fp32", "f32"), ("int8", "q8_0")]  # --backend llamacpp loads the fp32 run as f32, int8 as q8_0


def pairs(types: list[str]) -> list[tuple[str, str, str]]:
    """(aigc backend, aigc dtype, GGUF type) compared side by side: torch at each precision, then llamacpp."""
    found = [("fp32", "f32"), ("bf16", "bf16"), ("bf16", "f16"), ("int8", "q8_0")]
    return ([("torch", ours_dtype, kind) for ours_dtype, kind in found if kind in types]
            + [("llamacpp", ours_dtype, kind) for ours_dtype, kind in BACKEND_PAIRS if kind in types])


def ratio_verdict(ours_rate: float | None, theirs_rate: float | None, what: str, judged: bool) -> str:
    """"pp 1.04x met": aigc's rate over llama.cpp's, and whether it meets the target where one applies."""
    if ours_rate is None or theirs_rate is None:
        return f"{what} -"
    ratio = ours_rate / theirs_rate
    return f"{what} {ratio:.2f}x" + (f" {'met' if ratio >= TARGET else 'MISSED'}" if judged else "")


def rate(value: float | None, width: int) -> str:
    return f"{value:>{width},.1f}" if value is not None else f"{'-':>{width}}"


def of_floor(speed: Speed, bandwidth: float, batch: int) -> str:
    """'floor tok/s (rate as % of it)': the floor is the weight-read limit, ``batch`` rows per weight read."""
    if speed.step_bytes is None:
        return "-"
    floor = batch * bandwidth / speed.step_bytes
    share = f" ({100 * speed.decode / floor:.0f}%)" if speed.decode is not None else ""
    return f"{floor:,.1f}{share}"


HEADER = ["model", "batch", "aigc backend", "aigc / llama.cpp", "step MB aigc / l.cpp", "pp tok/s aigc", "pp tok/s l.cpp",
          "tg tok/s aigc", "tg tok/s l.cpp", "floor aigc (% of it)", "floor l.cpp (% of it)", "aigc / l.cpp: >= 0.9x"]


def print_header() -> None:
    print("| " + " | ".join(HEADER) + " |")
    print("|" + "|".join("-" * (len(cell) + 2) for cell in HEADER) + "|", flush=True)


def print_row(model: Model, batch: int, pair: tuple[str, str, str], mine: Speed, theirs: Speed, bandwidth: float) -> dict:
    step_mb = f"{mine.step_bytes / 1e6:,.0f} / " + (f"{theirs.step_bytes / 1e6:,.0f}" if theirs.step_bytes else "-")
    judged = batch == 1  # the targets are batch 1's; batch 8 shows the ratios only
    verdict = (f"{ratio_verdict(mine.prompt, theirs.prompt, 'pp', judged)}; "
               f"{ratio_verdict(mine.decode, theirs.decode, 'tg', judged)}"
               if theirs.error is None else "llama.cpp failed (below)")
    cells = [model.name, str(batch), pair[0], f"{pair[1]} / {pair[2]}", step_mb, rate(mine.prompt, 13),
             rate(theirs.prompt, 14), rate(mine.decode, 13), rate(theirs.decode, 14), of_floor(mine, bandwidth, batch),
             of_floor(theirs, bandwidth, batch), verdict]
    print("| " + " | ".join(f"{cell:<{len(head)}}" for cell, head in zip(cells, HEADER)) + " |", flush=True)
    return dict(model=model.name, batch=batch, pair=pair, ours=mine, theirs=theirs, verdict=verdict)


def batch_one(models: list[Model], cache: Path, bandwidth: float, new_tokens: int) -> list[dict]:
    """Each pair at batch 1: aigc (loaded once per backend and dtype) and llama-bench on the GGUF file; one row
    each (llama-bench runs once per file)."""
    rows, measured = [], {}
    for model in models:
        for backend, ours_dtype in dict.fromkeys(p[:2] for p in pairs(list(model.gguf))):
            generator = load_ours(model.run_dir, ours_dtype, backend)
            mine = our_speed(generator, model.vocab, 1, new_tokens)
            del generator
            for pair in (p for p in pairs(list(model.gguf)) if p[:2] == (backend, ours_dtype)):
                if (model.key, pair[2]) not in measured:
                    measured[model.key, pair[2]] = llama_bench(cache, model.gguf[pair[2]], new_tokens)
                theirs, record = measured[model.key, pair[2]]
                rows.append(print_row(model, 1, pair, mine, theirs, bandwidth) | dict(record=record))
    return rows


def batch_eight(models: list[Model], cache: Path, bandwidth: float, new_tokens: int, batch: int = 8) -> list[dict]:
    """Each pair at batch ``batch``: aigc's engine on ``batch`` prompts at once against llama-batched-bench."""
    rows, measured = [], {}
    for model in models:
        for pair in pairs(list(model.gguf)):
            generator = load_ours(model.run_dir, pair[1], pair[0])
            mine = our_speed(generator, model.vocab, batch, new_tokens)
            del generator
            if (model.key, pair[2]) not in measured:
                measured[model.key, pair[2]] = llama_batched(cache, model.gguf[pair[2]], batch, new_tokens)
            rows.append(print_row(model, batch, pair, mine, measured[model.key, pair[2]], bandwidth))
    return rows


SERVER_PROMPT = "The quick brown fox jumps over the lazy dog. " * 4  # the same text, one tokenizer, both servers
# Each client's prompt starts with its own word: llama-server keeps finished prompts in RAM (--cache-ram, on by
# default) and loads a cached one into a new slot, so 16 copies of one prompt would skip their prefill there
# (aigc has no prefix cache yet); every request prefills its own prompt on both servers.
CLIENT_WORDS = ["Zero", "One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine", "Ten", "Eleven",
                "Twelve", "Thirteen", "Fourteen", "Fifteen", "Sixteen"]


def start_server(command: list[str], ready_url: str) -> subprocess.Popen:
    """A server process, once ``ready_url`` answers 200 (the model loaded)."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            if httpx.get(ready_url, timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"`{' '.join(command)}` exited {process.returncode} before it was ready")
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"`{' '.join(command)}` was not ready after 5 minutes")


def clients_rate(url: str, model: str, clients: int, tokens: int) -> tuple[float, int]:
    """(output tokens/s, tokens) of ``clients`` concurrent /v1/completions requests of ``tokens`` greedy tokens
    each (after one warm-up request), each prompt its own (``CLIENT_WORDS``); the tokens are the servers' own counts
    (``usage``)."""

    async def one(client: httpx.AsyncClient, index: int) -> int:
        body = {"model": model, "prompt": f"{CLIENT_WORDS[index % len(CLIENT_WORDS)]}: {SERVER_PROMPT}",
                "max_tokens": tokens, "temperature": 0, "ignore_eos": True}
        response = await client.post(f"{url}/v1/completions", json=body)
        response.raise_for_status()
        return response.json()["usage"]["completion_tokens"]

    async def all_clients() -> tuple[float, int]:
        async with httpx.AsyncClient(timeout=1800) as client:
            await one(client, 0)
            started = time.perf_counter()
            produced = sum(await asyncio.gather(*(one(client, index) for index in range(1, clients + 1))))
            return produced / (time.perf_counter() - started), produced

    return asyncio.run(all_clients())


def served(command: list[str], ready: str, url: str, model: str, clients: int, tokens: int) -> tuple[float, int] | str:
    """(tokens/s, tokens) through one server, or why it could not be measured."""
    try:
        process = start_server(command, f"{url}{ready}")
    except RuntimeError as error:
        return str(error)
    try:
        return clients_rate(url, model, clients, tokens)
    except httpx.HTTPError as error:
        return f"{type(error).__name__}: {error}"
    finally:
        process.terminate()
        process.wait()


def servers(models: list[Model], cache: Path, clients: int = 16, tokens: int = 64) -> list[str]:
    """``aigc serve RUN`` (``--quantize int8`` against q8_0) against ``llama-server --parallel 16 -t 2``."""
    print(f"\nservers: {clients} concurrent clients, /v1/completions, {tokens} tokens each, temperature 0, "
          f"ignore_eos; output tokens/s\n")
    print("| model | aigc backend | aigc / llama.cpp | aigc serve tok/s | llama-server tok/s | ratio | "
          "tokens aigc / l.cpp |")
    print("|-------|--------------|------------------|------------------|--------------------|-------|"
          "---------------------|", flush=True)
    errors, measured = [], {}
    for model in models:
        for backend in ("torch", "llamacpp"):
            for ours_dtype, kind in BACKEND_PAIRS:
                if kind in model.gguf:
                    errors += serve_row(model, cache, backend, ours_dtype, kind, clients, tokens, measured)
    return errors


def serve_row(model: Model, cache: Path, backend: str, ours_dtype: str, kind: str, clients: int, tokens: int,
              measured: dict) -> list[str]:
    """One row of the servers' table (llama-server measured once per GGUF file); the errors seen."""
    port = free_port()
    mine = served([sys.executable, "-m", "aigc", "serve", str(model.run_dir), "--port", str(port), "--max-waiting",
                   "1024", "--backend", backend, *(["--quantize", "int8"] if ours_dtype == "int8" else [])],
                  "/ready", f"http://127.0.0.1:{port}", model.run_dir.name, clients, tokens)
    if (model.key, kind) not in measured:
        port = free_port()
        measured[model.key, kind] = served(
            [str(tool(cache, "llama-server")), "-m", str(model.gguf[kind]), "--parallel", str(clients),
             "-t", str(THREADS), "--port", str(port)], "/health", f"http://127.0.0.1:{port}", model.run_dir.name,
            clients, tokens)
    theirs = measured[model.key, kind]
    errors = [f"{model.name} {name}: {rate}" for name, rate in (("aigc serve", mine), ("llama-server", theirs))
              if isinstance(rate, str)]
    both = not isinstance(mine, str) and not isinstance(theirs, str)
    ratio = f"{mine[0] / theirs[0]:.2f}" if both else "-"
    cells = [f"{value[0]:,.1f}" if not isinstance(value, str) else "failed" for value in (mine, theirs)]
    counts = " / ".join(str(value[1]) if not isinstance(value, str) else "-" for value in (mine, theirs))
    print(f"| {model.name} | {backend} | {ours_dtype} / {kind} | {cells[0]} | {cells[1]} | {ratio} | {counts} |",
          flush=True)
    return errors


def cpu_flags() -> str:
    """The CPU's name and which of ``CPU_FLAGS`` it has (/proc/cpuinfo)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    flags = fields.get("flags", "").split()
    found = " ".join(flag for flag in CPU_FLAGS if flag in flags) or "none"
    return f"{fields.get('model name', '?')}; {os.cpu_count()} cores; flags: {found} (of {', '.join(CPU_FLAGS)})"


def summary(rows: list[dict]) -> str:
    """How many batch-1 comparisons meet the targets on each aigc backend, and which miss."""
    lines = []
    for backend in dict.fromkeys(row["pair"][0] for row in rows):
        checks = [(row, part) for row in rows if row["batch"] == 1 and row["pair"][0] == backend
                  for part in row["verdict"].split("; ") if part.split()[-1] in ("met", "MISSED")]
        missed = [f"{row['model']} {'/'.join(row['pair'][1:])} {part}" for row, part in checks if part.endswith("MISSED")]
        lines.append(f"targets (batch 1, aigc --backend {backend} >= {TARGET}x llama.cpp): "
                     f"{len(checks) - len(missed)} of {len(checks)} met" + (f"; missed: {', '.join(missed)}" if missed else ""))
    failed = {f"{row['model']} {row['pair'][2]}: {row['theirs'].error}" for row in rows if row["theirs"].error}
    lines += [f"llama.cpp error: {line}" for line in sorted(failed)]
    return "\n".join(lines)


def main() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", choices=SHAPE_NAMES, default=list(SHAPE_NAMES))
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--quick", action="store_true", help="smoke run: SmolLM2's shape, 32 new tokens, batch 1")
    parser.add_argument("--no-servers", action="store_true", help="skip the servers' comparison")
    parser.add_argument("--servers-only", action="store_true", help="the servers' comparison alone")
    parser.add_argument("--work", type=Path, help="folder for the models and GGUF files (default: a temporary one)")
    parser.add_argument("--llamacpp-dir", type=Path, help="llama.cpp build cache (default $AIGC_LLAMACPP_DIR or "
                                                          ".cache/llamacpp)")
    args = parser.parse_args()
    if args.quick:
        args.shapes, args.new_tokens = ["smollm2"], 32
    started = time.perf_counter()
    cache = llamacpp_dir(args.llamacpp_dir)
    build = start_build(cache)  # minutes: it runs while the models are made
    flags = cpu_flags()
    types = ["f32", "bf16", "q8_0"] + ([] if "avx512_bf16" in flags else ["f16"])  # bf16 is slow without it
    with tempfile.TemporaryDirectory(prefix="aigc-llamacpp-") as tmp:
        work = args.work or Path(tmp)
        models = [make_model(key, work, types) for key in args.shapes]
        finish_build(build, cache)
        torch.set_num_threads(THREADS)
        load = LoadWatch(threads=THREADS).start()
        bandwidth = read_bandwidth()
        print(f"\n{flags}\ntorch {torch.__version__}; llama.cpp {llamacpp_version(cache)} (llama-cpp-python "
              f"{LLAMA_CPP_PYTHON}'s vendor/llama.cpp; cmake {' '.join(CMAKE_OPTIONS[:3])}"
              f"{', without AMX' if NO_AMX in ' '.join(CMAKE_OPTIONS) else ''})\n"
              f"{THREADS} threads each; memory read rate {bandwidth / 1e9:.1f} GB/s; greedy, {PROMPT_TOKENS}-token "
              f"prompts, {args.new_tokens} new tokens; pp = prompt processing, tg = decode; floor = weight bytes per "
              f"step over the read rate\n", flush=True)
        if args.servers_only:
            server_errors = servers(models, cache)
            print("\n".join(f"server error: {line}" for line in server_errors) + "\n" + load.verdict())
            return
        print_header()
        rows = batch_one(models, cache, bandwidth, args.new_tokens)
        if rows and rows[0]["record"]:
            record = rows[0]["record"]
            print(f"\nllama-bench: build {record.get('build_commit')} ({record.get('build_number')}), "
                  f"backends {record.get('backends')}, cpu {record.get('cpu_info')}, n_batch {record.get('n_batch')}, "
                  f"n_ubatch {record.get('n_ubatch')}, flash_attn {record.get('flash_attn')}, "
                  f"{record.get('n_threads')} threads, {len(record.get('samples_ts', []))} repetitions")
        if not args.quick:
            print("\nbatch 8 (total tokens/s over the 8 rows; llama.cpp: llama-batched-bench)\n")
            print_header()
            rows += batch_eight(models, cache, bandwidth, args.new_tokens)
        server_errors = [] if args.quick or args.no_servers else servers(models, cache)
        print()
        print(summary(rows))
        for line in server_errors:
            print(f"server error: {line}")
        print(load.verdict())
    print(f"wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
