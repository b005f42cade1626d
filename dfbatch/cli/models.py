"""`dfbatch models ...`: list, register, alias, show, import-seed (MLflow model registry)."""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("models", help="model registry: list, register, alias, show, import-seed",
                              description=__doc__)
    sub = p.add_subparsers(dest="models_command", required=True)

    def common(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else MLflow's default sqlite:///mlflow.db)")
        return sp

    def naming(sp: argparse.ArgumentParser) -> None:
        # the name in the default model URI: building the parser must not import the registry (torch), which
        # every command's start-up, `dfbatch query` included, would pay for
        from dfbatch.config import DEFAULT_MODEL_URI

        DEFAULT_MODEL_NAME = DEFAULT_MODEL_URI.removeprefix("models:/").split("@")[0]
        sp.add_argument("--name", default=DEFAULT_MODEL_NAME, help=f"registered model name (default {DEFAULT_MODEL_NAME})")
        sp.add_argument("--alias", default=None, help="set this alias on the new version (champion, challenger)")
        sp.add_argument("--description", default=None)

    sp = common(sub.add_parser("list", help="registered models and versions"))
    sp.add_argument("--name", default=None, help="only this registered model")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=_list)

    sp = common(sub.add_parser("register", help="register a dfbatch checkpoint FILE or a logged runs:/RUN/model"))
    sp.add_argument("source", metavar="FILE|runs:/RUN/PATH")
    naming(sp)
    sp.add_argument("--threshold", type=float, default=None, help="decision threshold on P(FAKE) (default: the checkpoint's, else 0.5)")
    sp.set_defaults(func=_register)

    sp = common(sub.add_parser("alias", help="point ALIAS of model NAME at VERSION"))
    sp.add_argument("name", metavar="NAME")
    sp.add_argument("version", metavar="VERSION")
    sp.add_argument("alias", metavar="ALIAS", help="e.g. champion, challenger")
    sp.set_defaults(func=_alias)

    sp = common(sub.add_parser("show", help="spec, threshold, metrics and lineage of NAME[@ALIAS|/VERSION], a models:/ or runs:/ URI, or a checkpoint FILE"))
    sp.add_argument("model", metavar="NAME[@ALIAS|/VERSION]")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=_show)

    sp = common(sub.add_parser("import-seed", help="import a seed ResNeXt50-LSTM state dict (model_*_acc_N_frames_*.pt) and register it"))
    sp.add_argument("file", metavar="FILE.pt")
    sp.add_argument("--frames", type=int, required=True, help="frames per sequence the seed was trained on (the N in its file name)")
    naming(sp)
    sp.add_argument("--threshold", type=float, default=0.5)
    sp.set_defaults(func=_import_seed)


def _ts(ms) -> str:
    if not ms:
        return ""
    return datetime.fromtimestamp(int(ms) / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")


def _list(args) -> int:
    from dfbatch.errors import redact
    from dfbatch.models.registry import list_models, resolve_tracking_uri

    rows = list_models(args.tracking_uri, name=args.name)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no registered models at {redact(resolve_tracking_uri(args.tracking_uri))} "
              "(run `make demo` or `dfbatch models import-seed FILE.pt --frames N`)")
        return 0
    header = ("NAME", "VER", "ALIASES", "KIND", "BACKBONE", "TEMPORAL", "THRESH", "CREATED (UTC)")
    table = [header] + [(r["name"], r["version"], ",".join(r["aliases"]) or "-", r["kind"], r["backbone"],
                         r["temporal"], r["threshold"], _ts(r["created"])) for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    return 0


def _register(args) -> int:
    from dfbatch.models.registry import register_uri

    version = register_uri(args.source, args.name, alias=args.alias, threshold=args.threshold,
                           description=args.description, tracking_uri=args.tracking_uri)
    _done(args.name, version, args.alias)
    return 0


def _alias(args) -> int:
    from dfbatch.models.registry import set_alias

    set_alias(args.name, args.version, args.alias, tracking_uri=args.tracking_uri)
    print(f"models:/{args.name}@{args.alias} -> version {args.version}")
    return 0


def _import_seed(args) -> int:
    from dfbatch.models.registry import import_seed

    version = import_seed(args.file, args.frames, args.name, alias=args.alias, threshold=args.threshold,
                          description=args.description, tracking_uri=args.tracking_uri)
    _done(args.name, version, args.alias)
    return 0


def _done(name: str, version: str, alias: str | None) -> None:
    print(f"registered models:/{name}/{version}" + (f" (alias {alias}: models:/{name}@{alias})" if alias else ""))


def _show(args) -> int:
    from dfbatch.models.registry import show

    info = show(args.model, tracking_uri=args.tracking_uri)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    title = f"{info['name']} version {info['version']}" if info.get("name") else info["uri"]
    print(title)
    print(f"  uri:          {info['pinned_uri']}")
    if info.get("aliases"):
        print(f"  aliases:      {', '.join(info['aliases'])}")
    if info.get("description"):
        print(f"  description:  {info['description']}")
    print(f"  threshold:    {info['threshold']:g}  (FAKE when P(fake) >= threshold)")
    _print_calibration(info.get("calibration"))
    if info.get("promotion"):
        print(f"  promotion:    {info['promotion']}")
    print(f"  model:        {info['summary']}")
    print(f"  parameters:   {info['parameters']:,}")
    not_recorded = set(info.get("not_recorded") or [])
    print("  spec:" + (f" ({', '.join(sorted(not_recorded))}: not recorded in this model's spec, which predates "
                       "them; the defaults shown are what dfbatch did before recording them)" if not_recorded else ""))
    for k, v in info["spec"].items():
        if isinstance(v, dict):
            v = ", ".join(f"{dk}={dv}" for dk, dv in v.items())
        print(f"    {k:<13} {v}" + ("   (not recorded)" if k in not_recorded else ""))
    print("  metrics:" + ("" if info.get("metrics") else " (none)"))
    for k, v in sorted((info.get("metrics") or {}).items()):
        print(f"    {k:<13} {v:.4g}" if isinstance(v, (int, float)) else f"    {k:<13} {v}")
    print("  lineage:" + ("" if info.get("lineage") else " (none)"))
    for k, v in sorted((info.get("lineage") or {}).items()):
        print(f"    {k:<13} {v}")
    for k, v in sorted((info.get("tags") or {}).items()):
        print(f"  tag {k}: {v}")
    return 0


def _print_calibration(rec: dict | None) -> None:
    from dfbatch.evaluation.thresholds import describe_record

    if not rec:
        print("  calibration:  none (`dfbatch evaluate --model URI LABELS --calibrate eer` chooses thresholds on "
              "scored videos)")
        return
    print(f"  calibration:  {describe_record(rec)}")
    settings = rec.get("settings")
    print("    settings:   " + (", ".join(f"{k} {v}" for k, v in settings.items()) if settings else
                                "not the scoring job's (crops made for training)"))
    for agg, entry in sorted(rec.get("aggregations", {}).items()):
        temp = f"  temperature {entry['temperature']:g}" if entry.get("temperature") else ""
        mark = "  (default)" if agg == rec.get("default") else ""
        print(f"    {agg:<34} threshold {entry['threshold']:.4g}{temp}{mark}")
