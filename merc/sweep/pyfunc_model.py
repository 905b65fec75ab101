"""The MLflow ``pyfunc`` flavour of a merc checkpoint, as *models from code*: this file is the model.

``merc best`` saves the champion with ``mlflow.pyfunc.save_model(python_model=<this file>,
artifacts={"checkpoint": model.pt})``: MLflow copies the file and the checkpoint (a state dict +
JSON config written by :func:`merc.train.save_model`) into the model directory and pickles nothing;
loading runs this file, whose last line hands MLflow the model object, and ``load_context``
rebuilds the network with :func:`merc.train.load_model` (``torch.load(weights_only=True)``).

``predict`` takes a batch of dialogues as a dict of arrays (what ``mlflow.pyfunc`` passes through
unchanged when the model has no signature):

* one key per modality the model was trained on (``audio``, ``text``, ``visual``), float
  ``[B, N, d_m]``, zeros at padding;
* ``lengths``: int ``[B]`` (the real utterances of each dialogue; default: N for every dialogue);
* ``speakers``: int ``[B, N]`` (default 0);

and returns a DataFrame with one row per real utterance: ``dialogue``, ``utterance``,
``label_id``, ``label`` and ``p_<label>`` per class.
"""
from __future__ import annotations

import mlflow
from mlflow.pyfunc import PythonModel


class MercPyfunc(PythonModel):
    """A merc model behind ``mlflow.pyfunc``: dialogue batch in, per-utterance labels out."""

    def load_context(self, context) -> None:
        from merc.train import load_model
        self.model, self.config = load_model(context.artifacts["checkpoint"])
        self.model.eval()
        meta = self.config["meta"]
        self.modalities = list(meta["modalities"])
        self.dims = dict(meta["dims"])
        self.labels = list(meta["label_names"])

    def _batch(self, inputs: dict):
        import numpy as np
        import torch
        from merc.data.dataset import Batch
        missing = [m for m in self.modalities if m not in inputs]
        if missing:
            raise ValueError(f"predict: input has no {', '.join(missing)} features (the model "
                             f"takes {', '.join(self.modalities)}; found keys "
                             f"{', '.join(map(str, inputs))})")
        feats = {}
        for m in self.modalities:
            x = np.asarray(inputs[m], dtype=np.float32)
            if x.ndim != 3 or x.shape[2] != self.dims[m]:
                raise ValueError(f"predict: {m} must be [B, N, {self.dims[m]}], found "
                                 f"{list(x.shape)}")
            feats[m] = torch.from_numpy(x)
        B, N = next(iter(feats.values())).shape[:2]
        lengths = torch.as_tensor(np.asarray(inputs.get("lengths", [N] * B)), dtype=torch.long)
        if lengths.shape != (B,) or int(lengths.min()) < 1 or int(lengths.max()) > N:
            raise ValueError(f"predict: lengths must be {B} integers in [1, {N}], found "
                             f"{lengths.tolist()}")
        mask = torch.arange(N)[None, :] < lengths[:, None]
        speakers = torch.as_tensor(np.asarray(inputs.get("speakers", np.zeros((B, N)))),
                                   dtype=torch.long) * mask
        present = mask[..., None].expand(B, N, len(self.modalities)).clone()
        feats = {m: x * mask[..., None] for m, x in feats.items()}
        labels = torch.full((B, N), -100, dtype=torch.long)
        return Batch(feats, present, mask, speakers, labels, lengths, torch.arange(B))

    def predict(self, context, model_input, params=None):
        import pandas as pd
        import torch
        if not isinstance(model_input, dict):
            raise ValueError(f"predict: expected a dict of arrays (modalities, lengths, "
                             f"speakers), found {type(model_input).__name__}")
        batch = self._batch(model_input)
        with torch.no_grad():
            probs = torch.softmax(self.model(batch).logits.float(), dim=-1)
        b, n = batch.mask.nonzero(as_tuple=True)
        p = probs[b, n].numpy()
        ids = p.argmax(-1)
        out = pd.DataFrame({"dialogue": b.numpy(), "utterance": n.numpy(), "label_id": ids,
                            "label": [self.labels[i] for i in ids]})
        for k, name in enumerate(self.labels):
            out[f"p_{name}"] = p[:, k]
        return out


mlflow.models.set_model(MercPyfunc())
