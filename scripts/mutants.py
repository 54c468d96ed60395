"""Plant realistic bugs one at a time in a scratch copy of the repository and report which the tests catch.

    python scripts/mutants.py              # every mutant, the test files that guard it, single-threaded
    python scripts/mutants.py --only cfg-guidance-fixed --only sobel-range-dropped
    python scripts/mutants.py --list       # the mutants, without running anything
    python scripts/mutants.py --slow       # also the slow tests (the reference runs: minutes per mutant)

A maintainer's check of the test suite itself (`make mutants`), not part of CI. Each mutant is one textual change
to one file; the named test files run against the changed copy (pytest -x); a mutant is caught when a test fails.
The working tree is never touched. First the unchanged copy runs the same test files: a failure there would make
every mutant look caught, so it stops the run.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Mutant:
    name: str
    file: str       # relative to the repository
    old: str        # replaced at every occurrence (at least one)
    new: str
    tests: tuple    # the test files that should catch it
    means: str      # what the bug would mean for a user


MUTANTS = [
    # the eight bugs that once survived every test but the reference runs (issue #17)
    Mutant("self-attention-replacement-off", "zsharm/edit/attention.py",
           "return self.cur_step < (self.cross_steps if is_cross else self.self_steps)",
           "return is_cross and self.cur_step < (self.cross_steps if is_cross else self.self_steps)",
           ("tests/test_editing.py",), "structure preservation silently off"),
    Mutant("editing-guidance-fixed", "zsharm/edit/prompt_to_prompt.py",
           'unet_noise(run, "editing", latents, t, context, cfg.guidance)',
           'unet_noise(run, "editing", latents, t, context, 1.0)',
           ("tests/test_editing.py",), "the edit's strength ignores the setting"),
    Mutant("editing-null-embedding-of-step-0", "zsharm/edit/prompt_to_prompt.py",
           "torch.cat([uncond[index]] * 2", "torch.cat([uncond[0]] * 2",
           ("tests/test_editing.py",), "null-text optimisation wasted"),
    Mutant("nulltext-against-target-embedding", "zsharm/edit/nulltext.py",
           "][:1]])", "][1:]])",
           ("tests/test_nulltext.py",), "reconstructs the wrong branch"),
    Mutant("cross-replace-one-step-fewer", "zsharm/edit/prompt_to_prompt.py",
           "cross_steps=int(cfg.cross_replace_steps * (steps + 1))",
           "cross_steps=int(cfg.cross_replace_steps * (steps - 1))",
           ("tests/test_editing.py",), "one step fewer replaced"),
    Mutant("sobel-range-dropped", "zsharm/edit/nulltext.py",
           "sobel_input = image01 * 2 - 1 if run.config.sobel_input_signed else image01", "sobel_input = image01",
           ("tests/test_nulltext.py",), "the authors' quirk lost"),
    Mutant("fast-pidinet-without-gradient", "zsharm/edit/nulltext.py",
           "with torch.set_grad_enabled(cfg.pidinet_grad and torch.is_grad_enabled()):", "with torch.no_grad():",
           ("tests/test_nulltext.py",), "gamma does nothing in fast, contrary to its config"),
    Mutant("fused-background-averaged", "zsharm/edit/refinement.py",
           "fused.sum(0).unsqueeze(0)", "fused.mean(0).unsqueeze(0)",
           ("tests/test_refinement.py",), "a different L_Emb target"),
    # more realistic ones
    Mutant("nulltext-guidance-fixed", "zsharm/edit/nulltext.py",
           'unet_noise(run, "nulltext", latents, t, context, cfg.guidance)',
           'unet_noise(run, "nulltext", latents, t, context, 1.0)',
           ("tests/test_nulltext.py",), "null text optimised for another prediction than the edit uses"),
    Mutant("unconditional-rows-replaced-too", "zsharm/edit/attention.py",
           "probs[half + 1:] = probs[half:half + 1]", "probs[1:] = probs[:1]",
           ("tests/test_attention.py", "tests/test_editing.py"), "the edit's unconditional predictions disturbed"),
    Mutant("background-weights-not-renormalised", "zsharm/edit/refinement.py",
           "weights.data = torch.softmax(weights, dim=0).data", "weights.data = weights.data",
           ("tests/test_stage2.py", "tests/test_refinement.py"), "background word weights drift off a simplex"),
    Mutant("inversion-steps-backwards", "zsharm/edit/inversion.py",
           "a_next = alphas[t + stride] if t + stride < len(alphas)",
           "a_next = alphas[t - stride] if t - stride >= 0",
           ("tests/test_inversion.py",), "inversion walks down the schedule instead of up"),
    Mutant("nulltext-target-one-step-off", "zsharm/edit/inversion.py",
           "return self.latents[-2 - index]", "return self.latents[-1 - index]",
           ("tests/test_nulltext.py", "tests/test_stage2.py"), "null text aims at the latent it starts from"),
    Mutant("blend-takes-the-edit-everywhere", "zsharm/edit/blending.py",
           "np.asarray(mask, dtype=bool)[..., None], edited, image",
           "np.ones_like(mask, dtype=bool)[..., None], edited, image",
           ("tests/test_stage2.py",), "the background is repainted"),
    Mutant("edge-loss-outside-the-mask", "zsharm/edit/nulltext.py",
           "sobel_mse = F.mse_loss(out_sobel * m, self.ref_sobel * m)",
           "sobel_mse = F.mse_loss(out_sobel, self.ref_sobel)",
           ("tests/test_nulltext.py",), "edges kept where the background is, not inside the mask"),
    Mutant("refinement-regulariser-off", "zsharm/edit/refinement.py",
           "loss_reg = (reg_fg + reg_bg) * cfg.refine_reg_weight", "loss_reg = (reg_fg + reg_bg) * 0.0",
           ("tests/test_refinement.py",), "the words drift from their meaning"),
    Mutant("nulltext-inner-steps-one", "zsharm/config.py",
           "return min(index // 10 + 1, self.nulltext_max_inner)", "return 1",
           ("tests/test_nulltext.py",), "the paper's i//10 + 1 inner steps lost beyond step 10"),
    Mutant("paper-pidinet-with-gradient", "zsharm/edit/nulltext.py",
           "with torch.set_grad_enabled(cfg.pidinet_grad and torch.is_grad_enabled()):",
           "with torch.set_grad_enabled(torch.is_grad_enabled()):",
           ("tests/test_nulltext.py",), "the authors' no_grad PiDiNet lost in paper"),
    Mutant("paper-first-inner-step-quirk-lost", "zsharm/edit/nulltext.py",
           "        if not cfg.nulltext_stale_embedding:\n            context = torch.cat([uncond, embeddings[index][:1]])",
           "        if True:\n            context = torch.cat([uncond, embeddings[index][:1]])",
           ("tests/test_nulltext.py",), "paper's first inner step sees the current step's text embedding"),
    Mutant("paper-schedule-forgets-a-quirk", "zsharm/config.py",
           "sobel_input_signed=True, nulltext_stale_embedding=True", "nulltext_stale_embedding=True",
           ("tests/test_nulltext.py", "tests/test_switches.py"), "paper() no longer sets the authors' Sobel range"),
    Mutant("an-entry-point-with-its-own-default", "zsharm/harmonizer.py",
           'config = config or HarmonizeConfig(**companions.get("config", {}))\n    if describer',
           'config = config or HarmonizeConfig.paper()\n    if describer',
           ("tests/test_defaults.py",), "zsharm evaluate runs another schedule than harmonize"),
    Mutant("reference-strong-unet-not-restored", "zsharm/repro/reference.py",
           'if component == "unet" and delta_file is not None:', "if False:",
           ("tests/test_reference.py",), "the faithfulness check runs the weak model twice"),
]

# Compositions: every unit right, the way they are put together wrong (issue #24). The user gets a worse picture,
# or another one than asked for, with no error. `--composition` runs only these.
E2E = "tests/test_default_path.py"
COMPOSITION = [
    Mutant("transfer-dispatch-inverted", "zsharm/edit/iteration.py",
           'method = "resize" if config.transfer == "resize" else "guided"',
           'method = "guided" if config.transfer == "resize" else "resize"',
           (E2E,), "the default output loses the input's detail (guided becomes resize)"),
    Mutant("loop-keeps-scores-after-regenerate", "zsharm/decide/loop.py",
           "run_images, run_scores, regenerated = [], [], True", "run_images, regenerated = [], True",
           (E2E,), "the new description's first score is judged with the old one's: an early Conclude"),
    Mutant("loop-regenerates-twice", "zsharm/decide/loop.py",
           "run_images, run_scores, regenerated = [], [], True", "run_images, run_scores, regenerated = [], [], False",
           (E2E,), "a second fall regenerates again instead of concluding"),
    Mutant("loop-continues-from-the-same-input", "zsharm/decide/loop.py",
           "        elif record.decision == CONTINUE:\n            current = out",
           "        elif record.decision == CONTINUE:\n            current = current",
           (E2E,), "every iteration re-edits the same image: the loop never builds on its own work"),
    Mutant("loop-regenerate-skips-reload", "zsharm/decide/loop.py",
           "current = reload(run_images[-3])", "current = run_images[-3]",
           (E2E,), "paper goes on from the image in memory, not the authors' re-opened JPEG, after a Regenerate"),
    Mutant("iteration-zero-candidates-chained", "zsharm/decide/loop.py",
           "first.append(run(0, k, image))", "first.append(run(0, k, first[-1][0] if first else image))",
           (E2E,), "the second candidate edits the first one's output, not the composite"),
    Mutant("scoring-of-the-schedules-swapped", "zsharm/decide/scoring.py",
           '    if policy == "memory":', '    if policy != "memory":',
           (E2E,), "paper scores in memory, fast through a JPEG"),
    Mutant("jpeg-reload-in-every-schedule", "zsharm/decide/scoring.py",
           "        return (lambda image, _mask: evaluator.score(image, mask)), None",
           "        from zsharm.decide.evaluator import jpeg_round_trip\n"
           "        return (lambda image, _mask: evaluator.score(image, mask)), "
           "(lambda image: Image.fromarray(jpeg_round_trip(image)))",
           (E2E,), "fast goes on from a lossy JPEG copy of its own output"),
    Mutant("final-output-is-the-last-not-the-best", "zsharm/harmonizer.py",
           "final = finish(picture, mask, start, loop.image, cfg)",
           "final = finish(picture, mask, start, runs[-1].work_image, cfg)",
           (E2E,), "the full-resolution output is the last iteration's, not the best-scoring one"),
    Mutant("final-transfer-before-after-swapped", "zsharm/harmonizer.py",
           "final = finish(picture, mask, start, loop.image, cfg)",
           "final = finish(picture, mask, loop.image, start, cfg)",
           (E2E,), "the change is carried to full resolution backwards"),
    Mutant("command-drops-its-schedule", "zsharm/commands/harmonize.py",
           "return Harmonizer(model=args.model, config=config,", "return Harmonizer(model=args.model, config=None,",
           (E2E,), "--schedule, --steps, --size ... are ignored by zsharm harmonize"),
    Mutant("command-drops-its-iterations", "zsharm/commands/harmonize.py",
           "                        iterations=args.iterations, history_dir=args.history, name=Path(args.composite)",
           "                        iterations=None, history_dir=args.history, name=Path(args.composite)",
           ("tests/test_cli.py",), "--iterations is ignored for a single image"),
    Mutant("evaluator-sees-the-work-mask", "zsharm/decide/loop.py",
           "scoring(self.evaluator, self.scoring, mask if score_mask is None else score_mask)",
           "scoring(self.evaluator, self.scoring, mask)",
           ("tests/test_whole_method.py",), "the evaluator scores with the binarised work-size mask, not the file's"),
    Mutant("batch-ignores-caption-candidates", "zsharm/commands/harmonize.py",
           "candidates=candidates, iterations=args.iterations, history_dir=history,",
           "candidates=None, iterations=args.iterations, history_dir=history,",
           ("tests/test_cli.py", "tests/test_batch.py"), "caption.txt's descriptions are ignored: the VLM is asked"),
    Mutant("no-evaluator-runs-ten-iterations", "zsharm/decide/loop.py",
           "(10 if evaluator is not None else 1)", "10",
           (E2E,), "--no-evaluator runs 10 iterations, not 1"),
    Mutant("run-iteration-transfer-before-after-swapped", "zsharm/edit/iteration.py",
           "full = finish(picture, mask, work_input, work.work_image, config)",
           "full = finish(picture, mask, work.work_image, work_input, config)",
           (E2E,), "run_iteration carries the change backwards"),
]


def scratch_copy(dest: Path):
    """The repository's tracked and untracked-but-not-ignored files, copied to `dest`."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def run_tests(copy: Path, tests, slow: bool, timeout: float):
    # a fresh cache per run: a model folder built by an earlier run must not hide a mutant in the code that builds it
    cache = Path(tempfile.mkdtemp(prefix="cache-", dir=copy.parent))
    env = dict(os.environ, PYTHONPATH=str(copy), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               ZSHARM_TEST_CACHE=str(cache))
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    if not slow:
        cmd += ["-m", "not slow"]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - start, ""
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    seconds = time.perf_counter() - start
    # pytest: 0 all passed, 1 some failed, 2 interrupted (collection error), 5 nothing collected
    verdict = {0: "survived", 1: "caught", 5: "no tests"}.get(proc.returncode, f"error (pytest exit {proc.returncode})")
    failed = [line for line in proc.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    return verdict, seconds, failed[0] if failed else ""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", help="run only this mutant (repeatable)")
    parser.add_argument("--composition", action="store_true",
                        help="only the compositions (COMPOSITION: the end-to-end tests' planted bugs)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--slow", action="store_true", help="include tests marked slow")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per mutant")
    args = parser.parse_args(argv)
    pool = COMPOSITION if args.composition else MUTANTS + COMPOSITION
    mutants = [m for m in pool if not args.only or m.name in args.only]
    if args.only and len(mutants) != len(set(args.only)):
        parser.error(f"unknown mutant(s): {sorted(set(args.only) - {m.name for m in pool})}")
    if args.list:
        for m in mutants:
            print(f"{m.name:40s} {m.file:34s} {m.means}")
        return 0
    with tempfile.TemporaryDirectory(prefix="zsharm-mutants-") as tmp:
        copy = Path(tmp) / "repo"
        scratch_copy(copy)
        tests = sorted({t for m in mutants for t in m.tests})
        verdict, seconds, first = run_tests(copy, tests, args.slow, args.timeout * len(mutants))
        print(f"unchanged copy: {verdict} ({seconds:.0f} s, {' '.join(tests)})", flush=True)
        if verdict != "survived":
            print(f"the tests fail without any mutant ({first}); fix that first", file=sys.stderr)
            return 1
        rows = []
        for m in mutants:
            path = copy / m.file
            original = path.read_text()
            if original.count(m.old) == 0:
                rows.append((m, "not applicable (text not found)", 0.0, ""))
                print(f"{m.name:40s} not applicable: {m.file} no longer holds {m.old!r}", flush=True)
                continue
            path.write_text(original.replace(m.old, m.new))
            try:
                verdict, seconds, first = run_tests(copy, m.tests, args.slow, args.timeout)
            finally:
                path.write_text(original)
            rows.append((m, verdict, seconds, first))
            print(f"{m.name:40s} {verdict:10s} {seconds:5.0f} s  {first}", flush=True)
    applied = [r for r in rows if not r[1].startswith("not applicable")]
    caught = [r for r in applied if r[1] == "caught"]
    print("\n| mutant | where | what it would mean | verdict | seconds |\n|---|---|---|---|---|")
    for m, verdict, seconds, _ in rows:
        print(f"| {m.name} | {m.file} | {m.means} | {verdict} | {seconds:.0f} |")
    print(f"\nscore: {len(caught)}/{len(applied)} mutants caught"
          + (f" ({len(rows) - len(applied)} no longer apply)" if len(rows) != len(applied) else ""))
    return 0 if len(caught) == len(applied) else 1


if __name__ == "__main__":
    sys.exit(main())
