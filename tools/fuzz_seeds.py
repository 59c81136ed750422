#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (fuzz/corpus/<target>/).

Each seed is one fuzz input: a selector byte (see src/fuzzing.rs for what
its bits choose) followed by the file's bytes. The .npy/.npz seeds come from
numpy, the .mat seeds from the same minimal MATLAB v5 layout as the unit
tests (src/data/formats.rs, `mat_v5_bytes`), the TOML seeds from assets/ and
tests/fixtures/configs/. The checkpoint seeds are written by
`cargo test --release --test fuzz_regressions -- --ignored write_checkpoint_seeds`
(the crate's own `checkpoint::save`). Run from the repository root.
"""
import io
import struct
import zlib
from pathlib import Path

import numpy as np

ROOT = Path("fuzz/corpus")


def seed(target, name, selector, payload):
    folder = ROOT / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(bytes([selector]) + payload)


# ---------------------------------------------------------------- text tables
# selector: bits 0-1 extension (1D txt csv tsv), bit 2 region_by_time,
# bits 3-4 skip_columns (none, 1, 2, ["File", "Sub-brick"]).
seed("text_table", "afni_1d", 0, b"#1\t#2\t#3\n1\t2\t3\n4\t5\t6\n")
seed("text_table", "txt_whitespace", 1, b"0.5 1e-3 -2\n  3 4 5\n\n6 7 8\n")
seed("text_table", "csv_header", 2, b"a,b,c\n1.5,2.5,3.5\n4,5,6\n")
seed("text_table", "csv_bom_adhd_skip_names", 2 | (3 << 3),
     "\ufeffFile,Sub-brick,Mean_1,Mean_2\n/a.nii,0,1.5,2.5\n/a.nii,1,3.5,4.5\n".encode())
seed("text_table", "tsv_skip_one", 3 | (1 << 3), b"t\tr1\tr2\n0\t1\t2\n1\t3\t4\n")
seed("text_table", "semicolon_region_by_time", 1 | 4, b"1;2;3;4\n5;6;7;8\n")
seed("text_table", "skip_two", 2 | (2 << 3), b"x,y,1,2\nz,w,3,4\n")


# ---------------------------------------------------------------- npy / npz
# selector: bit 0 .npz, bit 1 region_by_time, bit 2 array_name = "ts".
def npy(array):
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def npz(compressed, **arrays):
    out = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(out, **arrays)
    return out.getvalue()


a = np.arange(12, dtype=np.float32).reshape(4, 3) / 4
seed("npy", "f32_c", 0, npy(a))
seed("npy", "f64_fortran", 2, npy(np.asfortranarray(a.astype(np.float64))))
seed("npy", "error_i16_big_endian", 0, npy(a.astype(">i2")))
seed("npy", "error_f16_1d", 0, npy(np.arange(5, dtype=np.float16)))
seed("npy", "npz_one", 1, npz(False, x=a))
seed("npy", "npz_named_compressed", 1 | 4, npz(True, ts=a, other=a[:2]))


# ---------------------------------------------------------------- .mat
# selector: bit 0 region_by_time, bit 1 array_name = "ts".
def element(data_type, payload):
    out = struct.pack("<II", data_type, len(payload)) + payload
    return out + b"\0" * (-len(out) % 8)


def mat_v5(name, rows, cols, column_major, mx_class=6, mi_type=9, fmt="<d", compress=False):
    body = element(6, struct.pack("<II", mx_class, 0))
    body += element(5, struct.pack("<ii", rows, cols))
    body += element(1, name.encode())
    body += element(mi_type, b"".join(struct.pack(fmt, int(v) if fmt[-1] in "bhiBHI" else v) for v in column_major))
    matrix = struct.pack("<II", 14, len(body)) + body
    header = b"MATLAB 5.0 MAT-file, x".ljust(116, b" ") + b"\0" * 8 + struct.pack("<H", 0x0100) + b"IM"
    if compress:
        packed = zlib.compress(matrix)
        return header + struct.pack("<II", 15, len(packed)) + packed
    return header + matrix


values = [float(v) for v in range(6)]
seed("mat", "double", 0, mat_v5("x", 3, 2, values))
seed("mat", "named_ts_region_by_time", 1 | 2, mat_v5("ts", 2, 3, values))
seed("mat", "single", 0, mat_v5("x", 2, 3, values, mx_class=7, mi_type=7, fmt="<f"))
seed("mat", "error_int16", 0, mat_v5("x", 2, 3, values, mx_class=10, mi_type=3, fmt="<h"))
seed("mat", "compressed", 2, mat_v5("ts", 3, 2, values, compress=True))
seed("mat", "two_variables", 2, mat_v5("a", 1, 2, values[:2]) + mat_v5("ts", 3, 2, values)[128:])


# ---------------------------------------------------------------- TOML
# selector: bit 0 experiment config (else dataset description).
seed("toml", "dataset_abide", 0, Path("assets/abide_cc200.toml").read_bytes())
seed("toml", "dataset_minimal", 0, b'files = "*.npy"\norientation = "region_by_time"\n'
     b'[labels]\ntable = "labels.csv"\nid_column = "id"\nlabel_column = "dx"\n'
     b'classes = [{ value = "0", name = "a" }, { value = "1", name = "b" }]\n')
for config in ["assets/default.toml", "tests/fixtures/configs/tiny.toml",
               "assets/experiments/table1_stptf.toml"]:
    seed("toml", "experiment_" + Path(config).stem, 1, Path(config).read_bytes())
