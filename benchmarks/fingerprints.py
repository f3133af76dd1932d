"""Fingerprints of short rcig runs: sha256 of the tensors each command writes.

    python benchmarks/fingerprints.py SRC_DIR OUT.json [--only NAME,...]

Runs every config variant of `rcig distill` (3 steps on the embedded digits, a tiny network),
two baselines and an eval through the command line of the source tree SRC_DIR (PYTHONPATH),
at one thread, and writes {name: hash}. Two source trees with equal fingerprints compute the
same tensors bit for bit on this machine: run it on a worktree of the commit before a refactor
and on the refactor, in one sitting, and compare the two files."""
import hashlib, json, os, subprocess, sys, tempfile
from pathlib import Path

SRC, OUT = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
ONLY = set(sys.argv[sys.argv.index("--only") + 1].split(",")) if "--only" in sys.argv else None
TINY = ["width=8", "pool_size=3", "target_batch_size=128", "max_online_steps=6", "inner_lr=0.003", "hvp_lr=0.003"]
DISTILL = {
    "adam": [],
    "tuned": ["inner_lr=null", "hvp_lr=null"],
    "cg": ['solver="cg"', "n_inner_steps=5", "n_hinv_steps=5"],
    "aug": ["aug=crop,rotate", "aug_repeats=1"],
    "aug_per_pass_cg": ['solver="cg"', "aug=crop,translate", "aug_per_pass=true", "normal_repeats=0", "aug_repeats=1",
                        "aug_copies=2"],
    "flip": ["flip=true"],
    "herding": ['init="herding"'],
    "noise": ['init="noise"'],
    "subsampled": ["direct_batch_sizes=[8,64]", "implicit_batch_size=8", "hinv_batch_size=8",
                   "inner_train_batch_size=8", "pool_train_batch_size=8", "max_forward_batch_size=7"],
    "not_linearized": ["linearize=false"],
    "relu_torchinit_bn": ["softplus_beta=0", 'network_init="torch"', 'norm="batch"'],
    "boost_adapt_nolabels": ["proto_lr_boost=3", "proto_lr_boost_steps=2", "lr_adapt_every=2", "learn_labels=false"],
    "repeats": ["normal_repeats=2"],
}


def tensors_hash(path: Path) -> str:
    from safetensors.numpy import load_file
    h = hashlib.sha256()
    for k, v in sorted(load_file(str(path)).items()):
        h.update(k.encode()); h.update(v.tobytes())
    return h.hexdigest()[:16]


def losses_hash(log: Path) -> str:
    recs = [json.loads(l) for l in log.read_text().splitlines()]
    keep = [(r.get("iter"), r.get("outer_loss"), r.get("outer_acc"), r.get("inner_lr"), r.get("hvp_lr"))
            for r in recs if "outer_loss" in r]
    return hashlib.sha256(json.dumps(keep).encode()).hexdigest()[:16]


def rcig(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(SRC / "src"), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "rcig", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{args}: exit {r.returncode}\n{r.stderr[-2000:]}")


result = {}
with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    for name, sets in DISTILL.items():
        if ONLY and name not in ONLY:
            continue
        out = tmp / name
        extra = [a for s in TINY + sets for a in ("--set", s)]
        rcig("distill", "--dataset", "digits", "--ipc", "2", "--steps", "3", "--seed", "1", "--out", str(out),
             "--no-eval", "--quiet", *extra, cwd=tmp)
        result[name] = tensors_hash(out / "distilled.safetensors") + "/" + losses_hash(out / "log.jsonl")
        print(name, result[name], flush=True)
    if not ONLY or "baselines" in ONLY:
        for method in ("random", "herding"):
            f = tmp / f"{method}.safetensors"
            rcig("baseline", "--dataset", "digits", "--ipc", "3", "--method", method, "--seed", "2", "--out", str(f), cwd=tmp)
            result[f"baseline_{method}"] = tensors_hash(f)
            print(method, result[f"baseline_{method}"], flush=True)
        js = tmp / "eval.json"
        rcig("eval", str(tmp / "herding.safetensors"), "--models", "2", "--steps", "60", "--test-limit", "300",
             "--json", str(js), cwd=tmp)
        e = json.loads(js.read_text())
        result["eval"] = [e["no_aug"]["accs"], e["aug"]["accs"]]
        print("eval", result["eval"], flush=True)
OUT.write_text(json.dumps(result, indent=1) + "\n")
