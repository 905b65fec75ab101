"""The four late-fusion backbones SPCL plugs into (SPCL paper sec. 4.2): DialogueGCN, BiDDIN,
MMGCN and MM-DFN, registered as ``dialoguegcn``, ``biddin``, ``mmgcn`` and ``mmdfn``.

Each returns per-modality logits z^m (SPCL Eq. (1)) in ``Output.modality_logits`` and their sum
(SPCL Eq. (2)) as the joint logits, which is what :mod:`merc.strategies.spcl` reads. Shared pieces
(late fusion, sequence encoders, cached graphs) live in :mod:`merc.models.backbones._common`.
"""
