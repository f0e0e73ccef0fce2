"""The embedded model's conversion (ragqa_exp/embedded.py): the GGUF is parsed once, not once per thing
transformers reads from it (tokenizer, config, weights)."""
from __future__ import annotations

import numpy as np


def test_one_gguf_reader_shares_one_reader_per_file_and_restores_gguf(tmp_path):
    import gguf

    from ragqa_exp.embedded import one_gguf_reader

    files = []
    for name in ("a.gguf", "b.gguf"):
        w = gguf.GGUFWriter(str(tmp_path / name), arch="llama")
        w.add_string("general.name", name)
        w.add_tensor("t", np.arange(8, dtype=np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        files.append(tmp_path / name)
    original = gguf.GGUFReader
    with one_gguf_reader() as made:
        from gguf import GGUFReader  # as transformers imports it: inside its loading function, at call time

        first, again, other = GGUFReader(files[0]), GGUFReader(str(files[0])), GGUFReader(files[1])
        assert first is again and other is not first and len(made) == 2
        assert bytes(first.fields["general.name"].parts[-1]).decode() == "a.gguf"
        assert bytes(other.fields["general.name"].parts[-1]).decode() == "b.gguf"
        assert first.tensors[0].data.tolist() == list(range(8))
    assert gguf.GGUFReader is original
    assert gguf.GGUFReader(files[0]) is not gguf.GGUFReader(files[0])  # outside the block: a new reader each time
