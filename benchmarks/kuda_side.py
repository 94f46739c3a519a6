"""Run one stage of the public KuDA reference code (MKMaS-GUET/KuDA) on our exported data, in its own venv.

    benchmarks/.venv-kuda/bin/python benchmarks/kuda_side.py knowledge REPO DATA.pkl OUT.json WORK_DIR \
        --seed 1111 --epochs 100 100 50
    benchmarks/.venv-kuda/bin/python benchmarks/kuda_side.py fusion REPO DATA.pkl OUT.json WORK_DIR \
        --seed S --epochs 50 --knowledge KNOWLEDGE.json

`knowledge` is its stage 1 (pretrain.py: T, V, A in turn, on label_T/V/A), run once and shared by the seeds of
`fusion`, its stage 2 (train.py), as its README does. REPO is the user's checkout of the reference. Its files are imported from there, never edited and never
copied; what it needs to run here is patched at run time, before its models are built:
1. `TransformerEncoder` returns (output, hidden states). The reference's README asks users to edit torch's
   own source for that; stock torch returns a tensor, and `MixDomainAdapter`'s `[0]` would then silently take
   the first sample of the batch. A subclass with the README's loop replaces the name in Encoder_KIAdapter.
2. BERT: `BertModel`/`BertConfig`/`BertTokenizer` become a frozen table of our MiniLM token states. The
   exporter writes row ids in place of BERT's token ids (`text_bert[:, 0]`), so the reference's text branch
   runs as written (mask from `text_bert[:, 1]`, adapters on hidden states 0/3/6/9/11). Only the last layer
   exists in our features, so every hidden state is that layer.
3. Widths: BERT-base's 768 is a literal in `UniPretrain` and `DyRoutTrans.dim_t`, and `UnimodalEncoder`
   fixes the vision/audio feature sizes to CH-SIMS's 709/33. The text adapters, layer norm and decoder and
   `dim_t` are rebuilt with the reference's own classes at the text width (384), the V/A input sizes are the
   data's.
4. No GPU: `.cuda()` (on the text mask) returns the tensor, and `.cpu()` returns it detached. The training
   loops keep `output.cpu()` of every batch for the epoch's metrics; on a GPU that is a copy, on a CPU it is
   the output itself, whose autograd graph then stays alive: memory grew ~180 MB per batch (~15 GB an epoch).
   `.cpu()` is used for nothing else in the reference.
5. Data: a missing modality (length 0: no face) is fed as one zero step, since the reference has no notion
   of a missing modality and an all-masked row makes attention NaN; an unknown unimodal label (NaN) becomes
   the multimodal label, as our trainer does, since the reference's MSE cannot skip a sample.
6. Options: the knowledge checkpoint paths hard-coded in `train.main` point to this run's stage 1; the
   list options (`seq_lens`, `fea_dims`, `n_epochs`) cannot be given on its command line (`type=list`), so
   they are set on the parsed options, with `num_workers=0` (1 thread) and this run's paths and seed.

Measurement hooks, which change nothing it computes: each phase function (train / evaluate / test) is timed,
and its metric function keeps the valid and test predictions of every fusion epoch. The reference trains all
epochs and selects nothing; here the epoch with the lowest valid MAE is reported, as our trainer selects.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import pickle
import subprocess
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # per-batch progress bars would fill the log

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

STAGE1_ORDER = ("T", "V", "A")  # pretrain.py's __main__ order; also the order of its list options
LETTER = {"T": "text", "V": "vision", "A": "audio"}
BERT_LAYERS = 12  # the reference reads hidden states 0, 3, 6, 9, 11 of BERT-base


# ---------------------------------------------------------------- shims

class EncoderWithStates(nn.TransformerEncoder):
    """The reference README's modified torch TransformerEncoder: returns (output, [input, layer 1, ...])."""

    def forward(self, src, mask=None, src_key_padding_mask=None, is_causal=None):
        out, states = src, [src]
        for layer in self.layers:
            out = layer(out, src_mask=mask, src_key_padding_mask=src_key_padding_mask)
            states.append(out)
        if self.norm is not None:
            out = self.norm(out)
        return out, states


class FrozenTokenStates(nn.Module):
    """Stands in for BertModel: our frozen MiniLM token states, looked up by the row ids the exporter wrote.

    `table` (rows, H) is set before the model is built; input_ids (B, L) -> last_hidden_state (B, L, H) and
    hidden_states, the same tensor for each of BERT's 13 entries (our features hold the last layer only)."""

    table: torch.Tensor | None = None

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        return cls()

    def __init__(self):
        super().__init__()
        self.register_buffer("states", FrozenTokenStates.table, persistent=False)  # not a weight to save

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        h = self.states[input_ids]
        return {"last_hidden_state": h, "hidden_states": (h,) * (BERT_LAYERS + 1)}


class NoFiles:
    """Stands in for BertConfig / BertTokenizer, whose files are not needed without BERT."""

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        return None


def import_file(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Reference:
    """The reference's modules, imported from the user's checkout, with the shims applied."""

    def __init__(self, repo: Path, info: dict, table: np.ndarray):
        sys.path.insert(0, str(repo))
        sys.argv = sys.argv[:1]  # train.py parses the command line at import
        import core.dataset as dataset
        import core.metric as metric
        import models.DyRoutFusion_CLS as fusion
        import models.Encoder_KIAdapter as ek
        import models.OverallModal as overall

        self.dataset, self.metric, self.overall = dataset, metric, overall
        self.pretrain = import_file("kuda_pretrain", repo / "pretrain.py")
        self.train = import_file("kuda_train", repo / "train.py")
        width, dims = info["dims"]["text"], {k: info["dims"][m] for k, m in LETTER.items()}

        ek.TransformerEncoder = EncoderWithStates
        ek.BertModel, ek.BertConfig, ek.BertTokenizer = FrozenTokenStates, NoFiles, NoFiles
        FrozenTokenStates.table = torch.from_numpy(table)
        if not torch.cuda.is_available():  # point 4
            torch.Tensor.cuda = lambda self, *a, **k: self
            torch.Tensor.cpu = lambda self, *a, **k: self.detach()

        # The classes are patched in place (their __init__ wrapped), not subclassed: the reference's own
        # `super(UniPretrain, self)` calls look the class up by its module-level name.
        uni_init, fusion_init, data_init = ek.UniPretrain.__init__, fusion.DyRoutTrans.__init__, dataset.MMDataset.__init__

        def uni_pretrain(net, modality, *args, **kwargs):
            """The data's V/A input sizes, and the text width in place of BERT-base's 768."""
            if modality in "VA":
                kwargs["fea_size"] = dims[modality]
            uni_init(net, modality, *args, **kwargs)
            if modality == "T":
                enc = net.encoder
                enc.adapters = enc._get_clones(ek.MixDomainAdapter(up_prj=width, down_prj=width // 2),
                                               len(enc.adapters))
                enc.layernorm = nn.LayerNorm(width)
                net.decoder = ek.Classifier(input_size=2 * width, hidden_size=[width // 2, width // 4, width // 8],
                                            output_size=1, drop_out=kwargs.get("drop_out", 0.0))

        def dy_rout_trans(net, opt):
            """`dim_t` reads the text width (2 x 384) in place of 2 x 768."""
            fusion_init(net, opt)
            net.dim_t = nn.Linear(2 * width, net.dim_t.out_features)

        def mm_dataset(ds, args, mode="train"):
            """A missing modality as one zero step; an unknown unimodal label as the multimodal one (point 5)."""
            data_init(ds, args, mode)
            for m in ("vision", "audio"):
                lengths, mask = getattr(ds, f"{m}_lengths"), getattr(ds, f"{m}_padding_mask")
                empty = np.nonzero(np.asarray(lengths) == 0)[0]
                mask[empty, 1] = False  # column 0 is the reference's always-visible slot
                lengths[empty] = 1
            for k, y in ds.labels.items():
                if k != "M":
                    y = np.asarray(y, dtype=np.float32)
                    ds.labels[k] = np.where(np.isnan(y), ds.labels["M"], y)

        ek.UniPretrain.__init__, fusion.DyRoutTrans.__init__ = uni_pretrain, dy_rout_trans
        dataset.MMDataset.__init__ = mm_dataset


# ---------------------------------------------------------------- measurement

class Recorder:
    """Times each phase call (train / evaluate / test) and keeps what each metric call scored, per stage and
    epoch; predictions only for the fusion stage's valid and test.

    Diagnostic probe: at evaluation the reference fuses without its per-modality LayerNorms (`senti=None`), a
    different function from the one it trains (see README). Each fusion-stage evaluation batch is therefore also
    run once through the training-time path (a dummy reference score: the ratios themselves are scalars per
    sample, which those LayerNorms remove), under the same no_grad, and kept as `*_pred_trainpath`. Its time is
    left out of the phase times."""

    def __init__(self, ref: Reference):
        self.stage, self.phase, self.epochs = "", "", {}
        self.probe, self.probe_clock = [], [0.0, 0.0]
        for module in (ref.pretrain, ref.train):
            for phase in ("train", "evaluate", "test"):
                setattr(module, phase, self.timed(phase, getattr(module, phase)))
        get_metrics, forward, recorder = ref.metric.MetricsTop.getMetics, ref.overall.KMSA.forward, self

        def recording_get_metrics(self, name):
            score = get_metrics(self, name)

            def scored(y_pred, y_true):
                result = score(y_pred, y_true)
                recorder.scored(y_pred, y_true, result)
                return result

            return scored

        def probed_forward(model, inputs, multi_senti):
            out = forward(model, inputs, multi_senti)
            if multi_senti is None and recorder.stage == "fusion":
                t0, c0 = time.time(), time.process_time()
                fresh = {**inputs, "mask": {**inputs["mask"], "T": []}}  # its text branch fills the list
                recorder.probe.append(forward(model, fresh, torch.zeros_like(out[0]))[0].detach().reshape(-1))
                recorder.probe_clock[0] += time.time() - t0
                recorder.probe_clock[1] += time.process_time() - c0
            return out

        ref.metric.MetricsTop.getMetics = recording_get_metrics
        ref.overall.KMSA.forward = probed_forward

    def timed(self, phase: str, fn):
        def wrapped(*args, **kwargs):
            if phase == "train":
                self.epochs.setdefault(self.stage, []).append({})
            self.phase, self.probe_clock = phase, [0.0, 0.0]
            t0, c0 = time.time(), time.process_time()
            out = fn(*args, **kwargs)
            self.epochs[self.stage][-1][f"{phase}_seconds"] = time.time() - t0 - self.probe_clock[0]
            self.epochs[self.stage][-1][f"{phase}_cpu_seconds"] = time.process_time() - c0 - self.probe_clock[1]
            return out

        return wrapped

    def scored(self, y_pred, y_true, result: dict) -> None:
        epoch = self.epochs[self.stage][-1]
        epoch[f"{self.phase}_metrics"] = {k: float(v) for k, v in result.items()}
        if self.stage == "fusion" and self.phase in ("evaluate", "test"):
            epoch[f"{self.phase}_pred"] = y_pred.detach().reshape(-1).tolist()
            epoch[f"{self.phase}_true"] = y_true.detach().reshape(-1).tolist()
            epoch[f"{self.phase}_pred_trainpath"] = torch.cat(self.probe).tolist()
        self.probe = []

    def seconds(self, stage: str) -> dict:
        """Training plus per-epoch validation, wall and CPU (the test pass each epoch is the reference's extra)."""
        eps = self.epochs.get(stage, [])
        return {"epochs": len(eps),
                "seconds": sum(e["train_seconds"] + e["evaluate_seconds"] for e in eps),
                "cpu_seconds": sum(e["train_cpu_seconds"] + e["evaluate_cpu_seconds"] for e in eps),
                "test_seconds": sum(e["test_seconds"] for e in eps)}


# ---------------------------------------------------------------- the two stages

def seq_lens(info: dict) -> list[int]:
    return [info["seq_lens"][LETTER[k]] for k in STAGE1_ORDER]


def knowledge_stage(ref: Reference, rec: Recorder, info: dict, data: Path, work: Path, seed: int,
                    epochs: list[int]) -> dict[str, Path]:
    """pretrain.py's main for T, V, A in turn (its __main__), on our train/valid/test with label_T/V/A.

    Returns the checkpoint it saved per modality: the last epoch's, as the reference does."""
    save = work / "knowledge"
    for old in save.glob("*.pth"):
        old.unlink()
    parse = ref.pretrain.parse_opts

    def options():
        opt = parse()
        opt.dataPath, opt.savePath, opt.seed, opt.num_workers = str(data), str(save), seed, 0
        opt.n_epochs, opt.seq_lens = list(epochs), seq_lens(info)
        opt.fea_dims = [info["dims"][LETTER[k]] for k in STAGE1_ORDER]
        return opt

    ref.pretrain.parse_opts = options
    for i, m in enumerate(STAGE1_ORDER):
        rec.stage = f"knowledge_{m}"
        ref.pretrain.main(i, m)
    found = {m: sorted(save.glob(f"DatasetName_{m}_*.pth")) for m in STAGE1_ORDER}
    if any(len(v) != 1 for v in found.values()):
        raise RuntimeError(f"expected one knowledge checkpoint per modality in {save}, found {found}")
    return {m: v[0] for m, v in found.items()}


def count(model: nn.Module, trainable: bool) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)


def fusion_stage(ref: Reference, rec: Recorder, info: dict, data: Path, work: Path, seed: int, epochs: int,
                 knowledge: dict[str, Path]) -> dict:
    """train.py's main with its default options (opts.py) for CH-SIMSv2; returns the parameter counts."""
    params = {}
    preprocess = ref.overall.KMSA.preprocess_model

    def preprocess_model(self, pretrain_path):  # train.main hard-codes its authors' checkpoint files
        preprocess(self, pretrain_path={m: str(p) for m, p in knowledge.items()})
        params.update(params=count(self, False), trainable_params=count(self, True))

    ref.overall.KMSA.preprocess_model = preprocess_model
    opt = argparse.Namespace(**vars(ref.train.opt))
    opt.datasetName, opt.dataPath, opt.seed, opt.num_workers = "simsv2", str(data), seed, 0
    opt.seq_lens, opt.n_epochs, opt.log_path = seq_lens(info), epochs, str(work / "log")
    rec.stage = "fusion"
    ref.train.main(opt)
    return {**params, "options": {k: v for k, v in vars(opt).items() if k not in ("dataPath", "log_path")}}


def select(epochs: list[dict]) -> dict:
    """The epoch with the lowest valid MAE (raw predictions, as our trainer's monitor), its test predictions,
    and for reference the last epoch and the best-on-test epoch (a test-selected number, not a fair one)."""
    mae = lambda e, s: float(np.mean(np.abs(np.subtract(e[f"{s}_pred"], e[f"{s}_true"]))))  # noqa: E731
    valid, test = [mae(e, "evaluate") for e in epochs], [mae(e, "test") for e in epochs]
    best = int(np.argmin(valid))
    pick = lambda i: {"epoch": i + 1, "valid_mae": valid[i], "test_mae": test[i],  # noqa: E731
                      "test_pred": epochs[i]["test_pred"], "test_label": epochs[i]["test_true"],
                      "test_pred_trainpath": epochs[i]["test_pred_trainpath"]}
    return {"selected": pick(best), "last": pick(len(epochs) - 1), "best_on_test": pick(int(np.argmin(test)))}


def code_version(repo: Path) -> dict:
    """The checkout's git commit when it has one, and a hash of its Python files either way."""
    h = hashlib.sha1()
    for f in sorted(repo.rglob("*.py")):
        h.update(f.relative_to(repo).as_posix().encode() + f.read_bytes())
    try:
        commit = subprocess.check_output(["git", "-C", str(repo), "rev-parse", "HEAD"], text=True,
                                         stderr=subprocess.DEVNULL).strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {"commit": commit, "py_sha1": h.hexdigest()}


def setup(a) -> tuple[Reference, Recorder, dict]:
    """The reference with its shims, on 1 thread, working in `a.work`; the export's sidecar."""
    torch.set_num_threads(1)
    info = json.loads(a.data.with_suffix(".json").read_text())
    with open(a.data, "rb") as f:
        data = pickle.load(f)
    table = np.concatenate([data[s]["text"] for s in ("train", "valid", "test")]).reshape(-1, info["dims"]["text"])
    del data
    os.chdir(a.work)  # anything the reference writes relative to its working folder lands here
    ref = Reference(a.repo, info, table)
    return ref, Recorder(ref), info


def curve(epochs: list[dict], phase: str) -> list[dict]:
    return [{k: e[f"{phase}_metrics"][k] for k in ("MAE", "Corr")} for e in epochs]


def run_knowledge(a) -> dict:
    ref, rec, info = setup(a)
    checkpoints = knowledge_stage(ref, rec, info, a.data, a.work, a.seed, a.epochs)
    return {"status": "ok", "checkpoints": {m: str(p) for m, p in checkpoints.items()},
            "modalities": {m: {**rec.seconds(f"knowledge_{m}"), "valid_curve": curve(rec.epochs[f"knowledge_{m}"],
                                                                                    "evaluate"),
                               "last": {s: rec.epochs[f"knowledge_{m}"][-1][f"{s}_metrics"]
                                        for s in ("evaluate", "test")}}
                           for m in STAGE1_ORDER}}


def run_fusion(a) -> dict:
    knowledge = json.loads(a.knowledge.read_text())
    ref, rec, info = setup(a)
    fusion = fusion_stage(ref, rec, info, a.data, a.work, a.seed, a.epochs,
                          {m: Path(p) for m, p in knowledge["checkpoints"].items()})
    eps = rec.epochs["fusion"]
    return {"status": "ok", **select(eps), **fusion, "fusion": rec.seconds("fusion"),
            "valid_curve": curve(eps, "evaluate"), "test_curve": curve(eps, "test"),
            "knowledge": {k: knowledge[k] for k in ("seed", "epochs", "out")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=["knowledge", "fusion"])
    ap.add_argument("repo", type=Path)
    ap.add_argument("data", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("work", type=Path)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--epochs", type=int, nargs="+", required=True,
                    help="knowledge: T V A epochs (pretrain.py's default 100 100 50); fusion: one number (50)")
    ap.add_argument("--knowledge", type=Path, help="fusion: the knowledge stage's OUT.json")
    a = ap.parse_args()
    a.repo, a.data, a.out, a.work = a.repo.resolve(), a.data.resolve(), a.out.resolve(), a.work.resolve()
    if a.stage == "fusion":
        a.epochs = a.epochs[0]
    a.work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    try:
        result = run_knowledge(a) if a.stage == "knowledge" else run_fusion(a)
    except Exception as e:  # the failure reason goes into the table
        traceback.print_exc()
        result = {"status": "failed", "error": f"{type(e).__name__}: {e}".splitlines()[0][:300]}
    result.update(stage=a.stage, seed=a.seed, epochs=a.epochs, out=str(a.out), data=str(a.data),
                  code=code_version(a.repo), wall_seconds=time.time() - t0, torch=torch.__version__,
                  threads=torch.get_num_threads())
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.with_name(f".{a.out.name}.tmp")
    tmp.write_text(json.dumps(result) + "\n")
    os.replace(tmp, a.out)  # atomic: a killed run leaves no half result behind
    print(json.dumps({k: v for k, v in result.items() if k not in ("selected", "last", "best_on_test")}))


if __name__ == "__main__":
    main()
