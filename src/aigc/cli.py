"""The ``aigc`` command: one table of subcommands; each parses, calls the library, and maps errors to exit codes.

Nothing imports this module. Heavy libraries (torch, tokenizers) are imported inside the handlers so
``aigc --help`` answers at once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aigc.config import (Config, GenerateConfig, LoadSettings, builtin_recipes, describe_keys, kinds_generate_settings,
                         kinds_list, load_config, load_raw)
from aigc.errors import AigcError, ConfigError
from aigc.flags import add_flags, with_flags

EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class HelpContext:
    """What a ``--help`` command line names: the kind of run (whose ``data.*`` settings are listed) and the recipe
    (whose own values are shown beside the defaults, so `aigc prepare text --help` says what `text` uses)."""

    kind: str | None = None
    recipe: str | None = None
    values: dict[str, Any] = field(default_factory=dict)  # the recipe's settings, as dotted keys


def _keys_help(context: HelpContext) -> str:
    """The settings a recipe takes, listed under a command's --help: the ``data`` settings of the context's kind,
    else every kind's; each with its default and, where the named recipe sets it, the recipe's value."""
    rows = describe_keys(context.kind)
    width = max(len(k) for k, _, _ in rows)
    lines = ["settings (key=value; values are YAML, lists as [a,b]):"]
    for key, default, meaning in rows:
        shown = f" [{default}]" if default not in ("", "[]") else ""
        own = context.values.get(key.split(" ")[0])
        if own is not None and str(own) != default:
            shown = f" [{context.recipe} recipe: {own}; default: {default or 'none'}]"
        lines.append(f"  {key:<{width}}  {meaning}{shown}")
    recipes = ", ".join(builtin_recipes())
    lines.append(f"\nRECIPE: a built-in name ({recipes}) or the path of a YAML file; default: code")
    if context.kind is None:
        lines.append("`aigc COMMAND RECIPE --help` lists only the data.* settings of the recipe's kind of run, and "
                     "the recipe's own values")
    return "\n".join(lines)


def _dotted(raw: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested recipe as {"train.lr": 0.0026, ...}; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            flat |= _dotted(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _help_context(argv: list[str]) -> HelpContext:
    """The kind of run and recipe a ``--help`` command line names (its recipe's ``data.kind``, or a
    ``data.kind=`` setting); empty when it asks for no help, names neither, or its recipe cannot be read."""
    if not {"-h", "--help"} & set(argv):
        return HelpContext()
    items = [a for a in argv[1:] if not a.startswith("-")]
    kinds = [a.partition("=")[2] for a in items if a.startswith("data.kind=")]
    recipe, _ = _split_recipe(items)
    try:
        raw = load_raw(recipe) if recipe is not None else {}
    except AigcError:
        return HelpContext(kinds[-1] if kinds else None)
    if not isinstance(raw, dict):
        return HelpContext(kinds[-1] if kinds else None)
    kind = kinds[-1] if kinds else (raw.get("data", {}).get("kind", "text") if recipe is not None else None)
    return HelpContext(kind, recipe, _dotted(raw))


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
    from aigc.tasks import collect

    print(collect(_config(args)).summary())
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from aigc.tasks import prepare

    print(prepare(_config(args)).summary())
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from aigc.pipeline import prepare_if_needed
    from aigc.training.loop import train

    config = _config(args)
    prepared = prepare_if_needed(config, rank=int(os.environ.get("RANK", "0")))  # torchrun sets RANK
    if prepared:
        print(prepared, file=sys.stderr)
    result = train(config, resume=args.resume)
    print(result.summary())
    return EXIT_INTERRUPTED if result.interrupted else 0


def cmd_eval(args: argparse.Namespace) -> int:
    from aigc.tasks import evaluate

    stray = [item for item in args.items if "=" not in item]
    if stray:
        raise AigcError(f"expected key=value after the run, got {' '.join(stray)!r} (e.g. data.paths=[notes/])")
    log = lambda line: print(line, file=sys.stderr)  # noqa: E731
    quantize = with_flags(LoadSettings(), args).quantize
    print(evaluate(Path(args.run), log=log, overrides=args.items, quantize=quantize).summary())
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from aigc.config import load_raw, validate_config
    from aigc.tuning.study import tune

    recipe, overrides = _split_recipe(args.items)
    raw = load_raw(recipe, overrides)
    command = [sys.executable, "-m", "aigc", "tune", *args.items, "--resume", "--workers", str(args.workers)]
    result = tune(validate_config(raw), raw, resume=args.resume, workers=args.workers,
                  log=lambda line: print(line, file=sys.stderr), worker_command=command, worker=args.worker)
    if args.worker:  # a helper of --workers: the process that started it reports
        return 0
    print(result.summary())
    return EXIT_INTERRUPTED if result.interrupted else 0 if result.best_value is not None else 1


def cmd_run(args: argparse.Namespace) -> int:
    from aigc.pipeline import run_pipeline

    result = run_pipeline(_config(args), log=lambda line: print(line, file=sys.stderr))
    print(result.summary())
    return EXIT_INTERRUPTED if result.interrupted else 0


def _stdin_prompts():
    """Lines of stdin; on a terminal, an interactive loop with a ``> `` prompt on stderr."""
    interactive = sys.stdin.isatty()
    if interactive:
        print("type a prompt, Enter to generate, Ctrl-D to quit", file=sys.stderr)
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            return
        yield line


def cmd_generate(args: argparse.Namespace) -> int:
    from aigc.checkpoint import load_checkpoint
    from aigc.tasks import load_generator, task_for
    from aigc.tasks.base import GenerateRequest

    checkpoint = load_checkpoint(Path(args.run))  # once: hashed, verified and its weights read one time
    settings = _run_sampling(checkpoint.config, args)
    grammar = _grammar(args)
    if grammar is not None and not checkpoint.config.model.is_text_gpt:
        raise ConfigError(f"--json-schema, --regex, --choice and --grammar constrain text runs; {args.run} is a "
                          f"data.kind={checkpoint.config.data.kind} run")
    task = task_for(checkpoint.config)
    load = with_flags(LoadSettings(), args)
    generator = load_generator(checkpoint, load.device, load.quantize, backend=load.backend)
    if grammar is not None:
        generator.constraints.check(grammar)  # before the first prompt is read
    request = GenerateRequest(args.prompt, n=args.n, seed=args.seed, stream=args.stream, out=args.out,
                              truncate=not args.no_truncate, lines=_stdin_prompts() if args.prompt is None else (),
                              grammar=grammar)
    task.generate(generator, request, settings, lambda text: print(text, end="", flush=True))
    return 0


def _grammar(args: argparse.Namespace):
    """The constraint ``aigc generate`` was given (--json-schema, --regex, --choice, --grammar), or None."""
    from aigc.generate.grammar import Grammar

    if args.regex is not None:
        return Grammar("regex", args.regex)
    if args.choice is not None:
        return Grammar.choice(args.choice)
    path = args.json_schema or args.grammar
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror}") from None
    if args.grammar is not None:
        return Grammar("lark", text)
    try:
        return Grammar.json_schema(json.loads(text))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not JSON ({err}); --json-schema takes a JSON schema file") from None


def cmd_chat(args: argparse.Namespace) -> int:
    """A terminal chat with a text run: the conversation is kept and the reply streamed; /reset, /exit.
    With stdin not a terminal, each input line is a one-turn conversation and its reply one output line."""
    from aigc.checkpoint import load_checkpoint
    from aigc.generate.sampling import sampling_params
    from aigc.tasks import load_generator

    checkpoint = load_checkpoint(Path(args.run))
    saved = checkpoint.config
    if not saved.model.is_text_gpt:
        raise AigcError(f"aigc chat talks to text runs; {args.run} is a {saved.data.kind} run (use aigc generate)")
    settings = _run_sampling(saved, args)
    load = with_flags(LoadSettings(), args)
    generator = load_generator(checkpoint, load.device, load.quantize, backend=load.backend)
    interactive = sys.stdin.isatty()
    system = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(system)
    if interactive:
        print("chat: type a message; /reset starts over, /exit (or Ctrl-D) quits", file=sys.stderr)
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            return 0
        text = line.rstrip("\n")
        if text.strip() == "/exit":
            return 0
        if text.strip() == "/reset":
            messages = list(system)
            continue
        if not text.strip():
            continue
        if not interactive:
            messages = list(system)
        messages.append({"role": "user", "content": text})
        prompt, stops = generator.chat_prompt(messages)
        params = sampling_params(settings, seed=args.seed, stop=tuple(settings.stop) + tuple(stops))
        reply = ""
        for event in generator.stream([prompt], params):
            reply += event.text
            if interactive:
                print(event.text, end="", flush=True)
        print(reply.replace("\n", " ") if not interactive else "", flush=True)
        messages.append({"role": "assistant", "content": reply})


def cmd_import(args: argparse.Namespace) -> int:
    from aigc.pretrained import import_model
    from aigc.pretrained.gguf_import import import_gguf, is_gguf

    stray = [item for item in args.items if "=" not in item]
    if stray:
        raise AigcError(f"expected key=value after the model, got {' '.join(stray)!r} (e.g. run.dir=runs/smollm)")
    source = Path(args.folder)
    load = import_gguf if is_gguf(source) else import_model
    print(load(source, args.items, args.dtype).summary())
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    if args.format == "gguf":
        from aigc.pretrained.gguf_export import export_gguf

        if args.merge:
            raise AigcError("--merge is for --format hf; a GGUF export always merges a LoRA run's adapters")
        print(export_gguf(Path(args.run), Path(args.out), args.type).summary())
        return 0
    from aigc.pretrained.exporter import export_run

    if args.type is not None:
        raise AigcError("--type is for --format gguf; a Hugging Face folder keeps the run's dtype")
    print(export_run(Path(args.run), Path(args.out), merge=args.merge).summary())
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    from aigc.flags import with_flags
    from aigc.serve.server import named_runs, serve
    from aigc.serve.settings import ServeSettings

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = with_flags(ServeSettings(), args).with_keys_from(os.environ)
    paths, names = named_runs(args.runs)
    serve(paths, settings, names)
    return 0


def _add_config_command(sub: argparse._SubParsersAction, name: str, handler: Callable, context: HelpContext,
                        summary: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        name,
        help=summary,
        description=summary,
        epilog=_keys_help(context),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("items", nargs="*", metavar="[RECIPE] [key=value ...]", help="recipe and overrides")
    parser.set_defaults(handler=handler)
    return parser


def _sampling_command(parser: argparse.ArgumentParser, handler: Callable) -> None:
    """The run, seed and device of a command that samples from a run, and the sampling flags (run defaults): the
    shared ones, then those of the kinds that add their own (a group per set of kinds)."""
    parser.add_argument("run", metavar="RUN_DIR_OR_CHECKPOINT")
    parser.add_argument("--seed", type=int, default=None, help="same seed, same output")
    add_flags(parser, LoadSettings)
    add_flags(parser.add_argument_group("sampling (default: the run's generate settings)"), GenerateConfig,
              defaults_from="the run's")
    groups: dict[tuple[str, ...], tuple[type, list[str]]] = {}
    for name, (settings, kinds) in kinds_generate_settings().items():
        groups.setdefault(tuple(kinds), (settings, []))[1].append(name)
    for kinds, (settings, names) in groups.items():
        add_flags(parser.add_argument_group(f"sampling of {kinds_list(kinds)} runs"), settings,
                  defaults_from="the run's", skip=tuple(set(settings.model_fields) - set(names)))
    parser.set_defaults(handler=handler)


def _run_sampling(config: Config, args: argparse.Namespace) -> GenerateConfig:
    """The run's ``generate`` settings with the flags given applied; a flag of another kind of run (``--beams`` on
    a text run) is refused, not ignored."""
    for name, (_, kinds) in kinds_generate_settings().items():
        if hasattr(args, name) and config.data.kind not in kinds:
            raise ConfigError(f"--{name.replace('_', '-')} is a setting of {kinds_list(kinds)} runs; "
                              f"{args.run} is a data.kind={config.data.kind} run")
    return with_flags(config.generate, args)


def build_parser(context: HelpContext | None = None) -> argparse.ArgumentParser:
    """The ``aigc`` parser; ``context``: the kind of run and recipe a ``--help`` names (see :class:`HelpContext`)."""
    from aigc import __version__

    context = context or HelpContext()
    parser = argparse.ArgumentParser(
        prog="aigc",
        description="From raw data to a deployed generative model: collect -> prepare -> train -> ...",
        epilog=textwrap.dedent("Run `aigc COMMAND --help` for a command's settings."),
    )
    parser.add_argument("--version", action="version", version=f"aigc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_config_command(sub, "run", cmd_run, context, "run every stage into one run directory, skipping unchanged ones")
    _add_config_command(sub, "collect", cmd_collect, context, "find the input files and count their records")
    _add_config_command(sub, "prepare", cmd_prepare, context, "clean, tokenize and shard the data")
    train = _add_config_command(sub, "train", cmd_train, context, "train the model on the prepared shards")
    train.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    tuner = _add_config_command(sub, "tune", cmd_tune, context,
                                "search settings with Optuna: each trial a training run "
                                "(tune.trials, tune.space, tune.metric ...; results in <run>/tune)")
    tuner.add_argument("--resume", action="store_true", help="continue the run's study (no finished trial reruns)")
    tuner.add_argument("--workers", type=int, default=1, help="trial processes on this machine (the cores are shared)")
    tuner.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)  # helper K of --workers
    evaluate = sub.add_parser("eval", help="score a run on its held-out data and write eval/report.md",
                              description="The run's best checkpoint on its held-out data: loss, perplexity, bits "
                              "per byte and sample diversity (text), code validity (code), BLEU and chrF (translation), "
                              "bits per pixel, prompt adherence and memorisation (images), bits per audio token, "
                              "adherence and mel-cepstral distortion (speech); writes RUN_DIR/eval/. --quantize int8 "
                              "scores int8 weights and reports the perplexity change they cause.")
    evaluate.add_argument("run", metavar="RUN_DIR")
    evaluate.add_argument("items", nargs="*", metavar="key=value",
                          help="data.*, eval.* or generate.* settings; data.paths=[files] scores those files instead "
                          "of the run's held-out split, reported in RUN_DIR/eval/files/ (e.g. an imported model on your notes)")
    add_flags(evaluate, LoadSettings, skip=("device", "backend"))
    evaluate.set_defaults(handler=cmd_eval)
    generate = sub.add_parser(
        "generate",
        help="generate with a trained model: text, translations, images or speech (no --prompt: read prompts line by line)",
        description="Generate from --prompt with the model of a run or checkpoint; only the output goes to stdout "
        "(text runs: the continuation; translation runs: one line per input line; image runs: the PNG paths; speech runs: "
        "the WAV paths). "
        "Without --prompt, prompts are read line by line from stdin (an interactive loop on a terminal; write \\n "
        "for a newline inside a prompt). Sampling settings default to the run's own (its recipe's generate "
        "section, what its evaluation used); flags override them for this call.",
    )
    _sampling_command(generate, cmd_generate)
    generate.add_argument("--prompt", help="text to continue, translate or draw")
    generate.add_argument("--n", type=int, default=1, help="samples per prompt")
    generate.add_argument("--stream", action="store_true", help="text runs: print text as it is generated")
    generate.add_argument("--no-truncate", action="store_true", help="error on prompts longer than the context")
    generate.add_argument("--out", help="image runs: grid.png (one sheet) or folder/ (one PNG per sample); speech runs: "
                          "clip.wav (one clip) or folder/ (one WAV per sample)")
    constrained = generate.add_argument_group("constrained output of text runs (one of)").add_mutually_exclusive_group()
    constrained.add_argument("--json-schema", metavar="FILE", type=Path, help="JSON that fits this JSON schema file")
    constrained.add_argument("--regex", help="text that matches this regular expression (whole)")
    constrained.add_argument("--choice", nargs="+", metavar="STR", help="exactly one of these strings")
    constrained.add_argument("--grammar", metavar="FILE", type=Path, help="text of this Lark grammar file")
    chat = sub.add_parser(
        "chat", help="chat with a text run in the terminal (its chat template; /reset, /exit)",
        description="An interactive chat with a text run (an imported model uses its own chat template; aigc's own "
        "runs a plain 'User: ... / Assistant:' one). The reply is streamed; /reset forgets the conversation, /exit "
        "quits. With stdin not a terminal, each input line is a one-turn conversation and its reply one output line.",
    )
    _sampling_command(chat, cmd_chat)
    chat.add_argument("--system", default=None, help="a system message that starts every conversation")
    importer = sub.add_parser(
        "import", help="turn a Hugging Face model folder (gpt2, llama, qwen2, mistral) or a GGUF file into a run",
        description="Import a Hugging Face model folder (config.json, model.safetensors or shards with "
        "model.safetensors.index.json, tokenizer.json, tokenizer_config.json, generation_config.json; the hub cache "
        "keeps them under ~/.cache/huggingface/hub/models--ORG--NAME/snapshots/REV/) as a run directory that "
        "generate, serve and chat accept. Settings: run.dir=PATH (default runs/<folder name>), model.block_size=N "
        "(a shorter context), generate.*=... (sampling defaults). A GGUF file (llama.cpp's format: gpt2, llama, qwen2 "
        "architectures, f32/f16/bf16/q8_0, byte-level BPE vocabulary) imports the same way, dequantized to float32 "
        "or --dtype. See docs/pretrained.md.",
    )
    importer.add_argument("folder", metavar="HF_DIR_OR_GGUF")
    importer.add_argument("items", nargs="*", metavar="key=value", help="settings of the run, e.g. run.dir=runs/smollm")
    importer.add_argument("--dtype", choices=["bf16", "fp32", "fp16"], default=None,
                          help="store the weights in this dtype (default: keep the stored dtype)")
    importer.set_defaults(handler=cmd_import)
    export = sub.add_parser("export", help="write a text run as a Hugging Face model folder or a GGUF file (llama.cpp, "
                            "Ollama)",
                            description="--format hf (default): the run's model as a Hugging Face folder (config.json, "
                            "model.safetensors, tokenizer files, chat template, generation_config.json) that "
                            "AutoModelForCausalLM and AutoTokenizer load. Imported runs export back bit for bit. A LoRA "
                            "run exports its base with the adapters in OUT_DIR/adapter (PEFT's format), or merged with "
                            "--merge. --format gguf: one GGUF file for llama.cpp (tokenizer, chat template, special "
                            "ids and sampling defaults inside; a LoRA run merged) and an Ollama Modelfile beside it. "
                            "See docs/pretrained.md.")
    export.add_argument("run", metavar="RUN_DIR_OR_CHECKPOINT")
    export.add_argument("out", metavar="OUT_DIR")
    export.add_argument("--format", choices=["hf", "gguf"], default="hf", help="what to write (default hf)")
    export.add_argument("--type", choices=["f32", "f16", "bf16", "q8_0"], default=None,
                        help="gguf: the matrices' type (default bf16 for a bf16 model, else f16)")
    export.add_argument("--merge", action="store_true", help="fold a LoRA run's adapters into the weights: one plain model")
    export.set_defaults(handler=cmd_export)
    serve = sub.add_parser("serve", help="serve runs behind an OpenAI-compatible HTTP API with a web playground",
                           description="Serve every run given at /v1 (completions, chat completions, images, speech, models) "
                           "with a playground at /. See docs/serving.md.")
    serve.add_argument("runs", nargs="+", metavar="[NAME=]RUN_DIR",
                       help="runs to serve, each under its folder name or NAME (LoRA runs of one base share it)")
    from aigc.serve.settings import ServeSettings

    add_flags(serve, ServeSettings)
    serve.set_defaults(handler=cmd_serve)
    recipes = sub.add_parser("recipes", help="list the built-in recipes")
    recipes.set_defaults(handler=cmd_recipes)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(_help_context(sys.argv[1:] if argv is None else argv))
    args, extra = parser.parse_known_args(argv)
    settings = [item for item in extra if "=" in item and not item.startswith("-")]
    if extra and (settings != extra or not hasattr(args, "items")):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if settings:  # key=value after a flag (`aigc eval RUN --quantize int8 eval.samples=0`): argparse leaves them over
        args.items = [*args.items, *settings]
    try:
        return args.handler(args)
    except AigcError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
