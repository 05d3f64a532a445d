"""The ``aigc`` command: one table of subcommands; each parses, calls the library, and maps errors to exit codes.

Nothing imports this module. Heavy libraries (torch, tokenizers) are imported inside the handlers so
``aigc --help`` answers at once.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

from aigc.config import Config, builtin_recipes, describe_keys, load_config
from aigc.errors import AigcError

EXIT_INTERRUPTED = 130


def _keys_help() -> str:
    rows = describe_keys()
    width = max(len(k) for k, _, _ in rows)
    lines = ["settings (key=value; values are YAML, lists as [a,b]):"]
    for key, default, meaning in rows:
        shown = f" [{default}]" if default not in ("", "[]") else ""
        lines.append(f"  {key:<{width}}  {meaning}{shown}")
    recipes = ", ".join(builtin_recipes())
    lines.append(f"\nRECIPE: a built-in name ({recipes}) or the path of a YAML file; default: code")
    return "\n".join(lines)


def _split_recipe(items: list[str]) -> tuple[str | None, list[str]]:
    """The optional RECIPE is the first item without '='; every other item is a key=value override."""
    if items and "=" not in items[0]:
        return items[0], items[1:]
    return None, items


def _config(args: argparse.Namespace) -> Config:
    recipe, overrides = _split_recipe(args.items)
    stray = [item for item in overrides if "=" not in item]
    if stray:
        raise AigcError(f"expected key=value after the recipe, got {' '.join(stray)!r}; see --help for the keys")
    return load_config(recipe, overrides)


def cmd_recipes(args: argparse.Namespace) -> int:
    recipes = builtin_recipes()
    width = max(map(len, recipes))
    for name, description in recipes.items():
        print(f"{name:<{width}}  {description}")
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    from aigc.data.collect import collect

    print(collect(_config(args)).summary())
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from aigc.data.prepare import prepare

    print(prepare(_config(args)).summary())
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from aigc.training.loop import train

    result = train(_config(args), resume=args.resume)
    print(result.summary())
    return EXIT_INTERRUPTED if result.interrupted else 0


def cmd_eval(args: argparse.Namespace) -> int:
    from aigc.evaluation import evaluate

    print(evaluate(Path(args.run), log=lambda line: print(line, file=sys.stderr)).summary())
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from aigc.pipeline import run_pipeline

    result = run_pipeline(_config(args), log=lambda line: print(line, file=sys.stderr))
    print(result.summary())
    return EXIT_INTERRUPTED if result.interrupted else 0


def _sampling(args: argparse.Namespace):
    from aigc.generate.sampling import SamplingParams

    return SamplingParams(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        min_p=args.min_p, repetition_penalty=args.repetition_penalty, presence_penalty=args.presence_penalty,
        frequency_penalty=args.frequency_penalty, seed=args.seed, stop=tuple(args.stop or ()),
        truncate_prompt=not args.no_truncate,
    )


def _print_completions(generator, prompts: list[str], params, args: argparse.Namespace) -> None:
    """Generated text only on stdout (so it composes in pipelines); samples separated by a blank line."""
    for prompt in prompts:
        batch = [prompt] * args.n
        if args.stream:
            current = 0
            for piece in generator.stream(batch, params):
                if piece.index != current:
                    print("\n", flush=True)
                    current = piece.index
                print(piece.text, end="", flush=True)
            print(flush=True)
        else:
            completions = generator.complete(batch, params)
            print("\n\n".join(c.text for c in completions), flush=True)


def _translate(generator, params, args: argparse.Namespace) -> int:
    """Seq2seq runs: translate --prompt, or every stdin line in batches of 32.

    One output line per input line (blank in, blank out), so the output lines up with the input in a
    pipeline; several outputs of one line (--n) are separated by tabs.
    """
    from aigc.generate.beam import BeamParams

    beam = None
    if args.beams > 1:
        beam = BeamParams(beams=args.beams, max_new_tokens=args.max_new_tokens, length_penalty=args.length_penalty,
                          n_best=args.n, no_repeat_ngram=args.no_repeat_ngram)
    if args.prompt is not None:
        lines = [args.prompt]
    else:
        lines = [line.rstrip("\n") for line in sys.stdin]
    for start in range(0, len(lines), 32):
        chunk = lines[start : start + 32]
        wanted = [line for line in chunk if line.strip()] if args.prompt is None else chunk
        outputs = iter(generator.translate(wanted, params, beam, n=args.n) if wanted else [])
        for line in chunk:
            print("\t".join(next(outputs)) if line.strip() or args.prompt is not None else "", flush=True)
    return 0


def _draw(params, args: argparse.Namespace) -> int:
    """Image runs: --n samples of --prompt, as one grid PNG (--out sheet.png) or one PNG each (--out folder/)."""
    from aigc.images.generator import ImageGenerator
    from aigc.images.pixels import grid, save_png

    if args.prompt is None:
        raise AigcError("an image run needs --prompt with a description, e.g. --prompt \"the digit seven\"")
    if not args.out:
        raise AigcError("an image run writes PNG files: add --out grid.png (one sheet) or --out folder/ (one PNG per sample)")
    generator = ImageGenerator.from_checkpoint(Path(args.run), device=args.device)
    images = generator.generate([args.prompt], args.n, params, args.guidance)[0]
    out = Path(args.out)
    if args.out.endswith(("/", "\\")) or out.is_dir():
        paths = [save_png(image, out / f"sample_{i:03d}.png") for i, image in enumerate(images)]
    else:
        if out.suffix.lower() != ".png":
            raise AigcError(f"--out {args.out}: a grid is written as PNG; name it *.png, or end the path with / for a folder")
        paths = [save_png(grid(images, columns=min(8, len(images)), scale=max(1, 128 // generator.side)), out)]
    print("\n".join(map(str, paths)))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from aigc.checkpoint import load_checkpoint
    from aigc.generate.text import TextGenerator

    params = _sampling(args)
    if load_checkpoint(Path(args.run)).config.model.image_size:
        return _draw(params, args)
    generator = TextGenerator.from_checkpoint(Path(args.run), device=args.device)
    if generator.is_seq2seq:
        return _translate(generator, params, args)
    if args.prompt is not None:
        _print_completions(generator, [args.prompt], params, args)
        return 0
    interactive = sys.stdin.isatty()
    if interactive:
        print("plain completion: type a prompt, Enter to generate, Ctrl-D to quit", file=sys.stderr)
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            return 0
        prompt = line.rstrip("\n")
        if prompt:
            _print_completions(generator, [prompt.replace("\\n", "\n")], params, args)


def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    from aigc.serve.app import ServeSettings
    from aigc.serve.server import serve

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    keys = tuple(args.api_key or ())
    if args.api_key_file:
        keys += tuple(line.strip() for line in Path(args.api_key_file).read_text().splitlines() if line.strip())
    env_key = os.environ.get("AIGC_API_KEY")
    keys += (env_key,) if env_key else ()
    settings = ServeSettings(api_keys=keys, cors_origins=tuple(args.cors_origin or ()), max_body_bytes=args.max_body_bytes,
                             max_n=args.max_n, max_tokens=args.max_tokens, timeout_s=args.timeout,
                             ping_interval_s=args.ping_interval)
    serve([Path(p) for p in args.runs], args.host, args.port, settings, max_running=args.max_batch,
          max_waiting=args.max_waiting, drain_timeout_s=args.drain_timeout, device=args.device)
    return 0


def _add_config_command(sub: argparse._SubParsersAction, name: str, handler: Callable, summary: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        name,
        help=summary,
        description=summary,
        epilog=_keys_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("items", nargs="*", metavar="[RECIPE] [key=value ...]", help="recipe and overrides")
    parser.set_defaults(handler=handler)
    return parser


def build_parser() -> argparse.ArgumentParser:
    from aigc import __version__

    parser = argparse.ArgumentParser(
        prog="aigc",
        description="From raw data to a deployed generative model: collect -> prepare -> train -> ...",
        epilog=textwrap.dedent("Run `aigc COMMAND --help` for a command's settings."),
    )
    parser.add_argument("--version", action="version", version=f"aigc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_config_command(sub, "run", cmd_run, "run every stage into one run directory, skipping unchanged ones")
    _add_config_command(sub, "collect", cmd_collect, "find the input files and count their records")
    _add_config_command(sub, "prepare", cmd_prepare, "clean, tokenize and shard the data")
    train = _add_config_command(sub, "train", cmd_train, "train the model on the prepared shards")
    train.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    evaluate = sub.add_parser("eval", help="score a run on its held-out data and write eval/report.md",
                              description="The run's best checkpoint on its held-out data: loss, perplexity, bits "
                              "per byte and sample diversity (text), code validity (code), BLEU and chrF (translation), "
                              "bits per pixel, prompt adherence and memorisation (images); writes RUN_DIR/eval/.")
    evaluate.add_argument("run", metavar="RUN_DIR")
    evaluate.set_defaults(handler=cmd_eval)
    generate = sub.add_parser(
        "generate",
        help="continue a prompt with a trained model (no --prompt: read prompts line by line)",
        description="Continue --prompt with the model of a run or checkpoint; only the generated text goes to "
        "stdout. Without --prompt, prompts are read line by line from stdin (an interactive loop on a terminal; "
        "write \\n for a newline inside a prompt).",
    )
    generate.add_argument("run", metavar="RUN_DIR_OR_CHECKPOINT")
    generate.add_argument("--prompt", help="text to continue")
    generate.add_argument("--max-new-tokens", type=int, default=200)
    generate.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    generate.add_argument("--top-k", type=int, default=None)
    generate.add_argument("--top-p", type=float, default=1.0)
    generate.add_argument("--min-p", type=float, default=0.0)
    generate.add_argument("--repetition-penalty", type=float, default=1.0)
    generate.add_argument("--presence-penalty", type=float, default=0.0)
    generate.add_argument("--frequency-penalty", type=float, default=0.0)
    generate.add_argument("--seed", type=int, default=None, help="same seed, same output")
    generate.add_argument("--stop", nargs="+", metavar="STR", help="stop before any of these strings")
    generate.add_argument("--n", type=int, default=1, help="samples per prompt")
    generate.add_argument("--stream", action="store_true", help="print text as it is generated")
    generate.add_argument("--no-truncate", action="store_true", help="error on prompts longer than the context")
    generate.add_argument("--beams", type=int, default=1, help="seq2seq: beam size (1 = greedy or sampling)")
    generate.add_argument("--length-penalty", type=float, default=1.0, help="seq2seq beam search: score / length^alpha")
    generate.add_argument("--no-repeat-ngram", type=int, default=0, help="seq2seq beam search: forbid repeated n-grams")
    generate.add_argument("--guidance", type=float, default=1.0, help="image runs: classifier-free guidance scale")
    generate.add_argument("--out", help="image runs: grid.png (one sheet) or folder/ (one PNG per sample)")
    generate.add_argument("--device", default="cpu")
    generate.set_defaults(handler=cmd_generate)
    serve = sub.add_parser("serve", help="serve runs behind an OpenAI-compatible HTTP API with a web playground",
                           description="Serve every run given at /v1 (completions, chat completions, models) with "
                           "a playground at /. See docs/serving.md.")
    serve.add_argument("runs", nargs="+", metavar="RUN_DIR")
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default: this machine only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--api-key", action="append", help="require 'Authorization: Bearer KEY' (repeatable; "
                       "also $AIGC_API_KEY)")
    serve.add_argument("--api-key-file", help="file with one API key per line")
    serve.add_argument("--cors-origin", action="append", help="allow browser requests from this origin (repeatable)")
    serve.add_argument("--max-batch", type=int, default=32, help="sequences decoded together (1 = no batching)")
    serve.add_argument("--max-waiting", type=int, default=256, help="queued requests before 429")
    serve.add_argument("--max-tokens", type=int, default=None, help="cap on max_tokens (default: the context)")
    serve.add_argument("--max-n", type=int, default=8, help="cap on n")
    serve.add_argument("--max-body-bytes", type=int, default=1_000_000, help="larger bodies get 413")
    serve.add_argument("--timeout", type=float, default=600.0, help="per-request deadline in seconds")
    serve.add_argument("--ping-interval", type=float, default=5.0, help="seconds between SSE keep-alive comments")
    serve.add_argument("--drain-timeout", type=float, default=30.0, help="seconds to finish running requests on SIGTERM")
    serve.add_argument("--device", default="cpu")
    serve.set_defaults(handler=cmd_serve)
    recipes = sub.add_parser("recipes", help="list the built-in recipes")
    recipes.set_defaults(handler=cmd_recipes)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except AigcError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
