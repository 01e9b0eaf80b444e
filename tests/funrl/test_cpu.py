"""funrl.cpu: the CPU's model and flags from a cpuinfo file, and which flags mean native bf16."""

from __future__ import annotations

from funrl.cpu import cpu_model_and_flags, native_bf16

AVX512_BF16 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni avx512_bf16

processor\t: 1
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni avx512_bf16
"""
AVX2_ONLY = "model name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\nflags\t\t: fpu sse2 avx2 fma\n"
AMX = "model name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: avx2 avx512f amx_bf16 amx_tile\n"


def test_model_and_flags_come_from_the_first_cpu(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text(AVX512_BF16)
    model, flags = cpu_model_and_flags(f)
    assert model == "AMD EPYC" and {"avx2", "avx512f", "avx512_bf16"} <= flags and "avx512" not in flags


def test_native_bf16_needs_avx512_bf16_or_amx(tmp_path):
    for text, native in ((AVX512_BF16, True), (AVX2_ONLY, False), (AMX, True), ("", False)):
        f = tmp_path / "cpuinfo"
        f.write_text(text)
        assert native_bf16(f) is native, text


def test_no_cpuinfo_file_means_no_flags(tmp_path):
    assert cpu_model_and_flags(tmp_path / "missing")[1] == frozenset()
    assert not native_bf16(tmp_path / "missing")
