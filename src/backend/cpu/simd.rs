//! A 16-lane f32 vector with just the operations the assignment kernel needs,
//! implemented with AVX-512, with AVX2 (two halves), and portably. The kernel
//! is written once, generic over [`F32x16`].

/// A kernel written once over [`F32x16`]; [`dispatch`] runs it with the
/// widest vectors the CPU has. `run` must be `#[inline(always)]` so that it
/// is compiled inside the caller with that CPU's features.
pub trait SimdKernel {
    type Output;
    fn run<S: F32x16>(self) -> Self::Output;
}

/// The vector instruction sets the kernels are compiled for, widest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Portable,
    Avx2,
    Avx512,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Self::Avx512 => "avx512",
            Self::Avx2 => "avx2",
            Self::Portable => "portable",
        }
    }

    /// Every level this CPU can run, widest first.
    pub fn available() -> Vec<Level> {
        let top = detected();
        [Self::Avx512, Self::Avx2, Self::Portable]
            .into_iter()
            .filter(|l| *l <= top)
            .collect()
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The widest level this CPU supports.
pub fn detected() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
        {
            return Level::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Level::Avx2;
        }
    }
    Level::Portable
}

/// The level the kernels run at: the widest the CPU has, or a narrower one
/// named by `SEGMENTA_SIMD` (`avx2`, `portable`), read once per process.
/// Narrowing lets an AVX-512 machine measure and test the AVX2 and portable
/// paths; a level the CPU lacks is never used (it would fault).
pub fn level() -> Level {
    static LEVEL: std::sync::OnceLock<Level> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        let top = detected();
        let asked = match std::env::var("SEGMENTA_SIMD").ok().as_deref() {
            Some("avx512") => Level::Avx512,
            Some("avx2") => Level::Avx2,
            Some("portable") => Level::Portable,
            Some(other) if !other.is_empty() && other != "auto" => {
                tracing::warn!(
                    value = other,
                    "SEGMENTA_SIMD is not one of avx512, avx2, portable, auto; ignored"
                );
                top
            }
            _ => top,
        };
        asked.min(top)
    })
}

/// Runs `kernel` at [`level`]: AVX-512, AVX2 + FMA, or portable code.
pub fn dispatch<K: SimdKernel>(kernel: K) -> K::Output {
    dispatch_at(level(), kernel)
}

/// Runs `kernel` at `level`, or at the CPU's own level where that is
/// narrower.
pub fn dispatch_at<K: SimdKernel>(level: Level, kernel: K) -> K::Output {
    #[cfg(target_arch = "x86_64")]
    {
        let level = level.min(detected());
        if level == Level::Avx512 {
            // SAFETY: the CPU supports the features the function is compiled for.
            return unsafe { run_avx512(kernel) };
        }
        if level == Level::Avx2 {
            // SAFETY: as above.
            return unsafe { run_avx2(kernel) };
        }
    }
    let _ = level;
    kernel.run::<Portable>()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn run_avx512<K: SimdKernel>(kernel: K) -> K::Output {
    kernel.run::<Avx512>()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2<K: SimdKernel>(kernel: K) -> K::Output {
    kernel.run::<Avx2>()
}

/// Asks for the cache line holding `p` ahead of its use (a hint: any
/// address is valid, none faults).
#[inline(always)]
pub fn prefetch(p: *const f32) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: prefetching is a hint, valid for any address.
        #[allow(unused_unsafe)]
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(p.cast());
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Sixteen f32 lanes. Methods are `unsafe` because the x86 implementations
/// require the CPU features their caller was compiled for; loads and stores
/// also need 16 readable floats.
pub trait F32x16: Copy {
    /// How many values of this type the register file holds: register
    /// tiles are sized to it, since a tile that spills runs at a fraction of
    /// the FMA rate (AVX-512: 32 registers of 16 lanes; AVX2: 16 of 8, so
    /// 8 of these).
    const REGISTERS: usize;
    type Mask: Copy;
    /// Eight lanes, for work that would leave half of a vector idle: on
    /// CPUs that split 512-bit operations in two it costs half as much.
    type Half: F32x8;
    unsafe fn splat(v: f32) -> Self;
    unsafe fn load(p: *const f32) -> Self;
    /// `a·b + c`
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self;
    /// `a − b`
    unsafe fn sub(a: Self, b: Self) -> Self;
    /// `sums[j] += w · row[j]` in f64, for the per-cluster sums.
    #[inline(always)]
    unsafe fn add_scaled_f64(sums: &mut [f64], row: &[f32], w: f64) {
        if w == 1.0 {
            sums.iter_mut().zip(row).for_each(|(s, &v)| *s += v as f64);
        } else {
            sums.iter_mut()
                .zip(row)
                .for_each(|(s, &v)| *s += w * v as f64);
        }
    }

    /// Transposes a tile of 16 rows of `d` values (row-major) into `d`
    /// columns of 16 (`out[j · 16 + r] = tile[r · d + j]`).
    #[inline(always)]
    unsafe fn transpose_tile(tile: &[f32], d: usize, out: &mut [f32]) {
        debug_assert!(tile.len() >= 16 * d && out.len() >= 16 * d);
        for (r, row) in tile.chunks_exact(d).take(16).enumerate() {
            for (j, &v) in row.iter().enumerate() {
                *out.get_unchecked_mut(j * 16 + r) = v;
            }
        }
    }
    unsafe fn store(self, p: *mut f32);
    unsafe fn lt(a: Self, b: Self) -> Self::Mask;
    unsafe fn eq(a: Self, b: Self) -> Self::Mask;
    /// Lanes of `yes` where `m` is set, else of `no`.
    unsafe fn select(m: Self::Mask, yes: Self, no: Self) -> Self;
    /// The lanes of `m` as bits, lane 0 lowest.
    unsafe fn bits(m: Self::Mask) -> u32;
    /// The smallest lane.
    unsafe fn reduce_min(self) -> f32;
    /// The lanes, whole numbers in `0..2²⁴` (centroid indices carried as
    /// f32), stored as u32 at `p` (16 writable values).
    unsafe fn store_u32(self, p: *mut u32);
    /// `table[idx[l]]` per lane, each index clamped to the table's last
    /// entry, so no index can read outside it. `table` is not empty.
    unsafe fn gather(table: &[f32], idx: &[u32; 16]) -> Self;
    /// Lanes 0–7 and lanes 8–15.
    unsafe fn halves(self) -> (Self::Half, Self::Half);
}

/// Eight f32 lanes: what the Gram's diagonal tiles and the large-k
/// kernel's per-row minima need.
pub trait F32x8: Copy {
    /// How many values of this type the register file holds, at least
    /// (AVX2: 16 ymm; AVX-512 has 32 but shares the type; portable: as
    /// SSE2's 16 xmm hold, two per value).
    const REGISTERS: usize;
    type Mask: Copy;
    unsafe fn splat(v: f32) -> Self;
    unsafe fn load(p: *const f32) -> Self;
    /// `a·b + c`
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self;
    /// `a − b`
    unsafe fn sub(a: Self, b: Self) -> Self;
    /// The lanes of `m` as bits, lane 0 lowest.
    unsafe fn bits(m: Self::Mask) -> u32;
    unsafe fn store(self, p: *mut f32);
    unsafe fn lt(a: Self, b: Self) -> Self::Mask;
    unsafe fn eq(a: Self, b: Self) -> Self::Mask;
    /// Lanes of `yes` where `m` is set, else of `no`.
    unsafe fn select(m: Self::Mask, yes: Self, no: Self) -> Self;
    /// Per lane `a < b ? a : b`: the same as `select(lt(a, b), a, b)`, in
    /// one instruction on x86 (a blend is three on Intel cores).
    unsafe fn min(a: Self, b: Self) -> Self;
    /// The smallest lane.
    unsafe fn reduce_min(self) -> f32;
}

/// The portable types' lane-wise bodies, shared by 8 and 16 lanes.
mod lanes {
    #[inline(always)]
    pub fn fma<const N: usize>(a: &[f32; N], b: &[f32; N], c: &[f32; N]) -> [f32; N] {
        std::array::from_fn(|l| a[l] * b[l] + c[l])
    }
    #[inline(always)]
    pub fn sub<const N: usize>(a: &[f32; N], b: &[f32; N]) -> [f32; N] {
        std::array::from_fn(|l| a[l] - b[l])
    }
    /// Lane 0 lowest.
    #[inline(always)]
    pub fn bits<const N: usize>(m: &[bool; N]) -> u32 {
        m.iter().rev().fold(0, |acc, &b| (acc << 1) | b as u32)
    }
    #[inline(always)]
    pub fn lt<const N: usize>(a: &[f32; N], b: &[f32; N]) -> [bool; N] {
        std::array::from_fn(|l| a[l] < b[l])
    }
    #[inline(always)]
    pub fn eq<const N: usize>(a: &[f32; N], b: &[f32; N]) -> [bool; N] {
        std::array::from_fn(|l| a[l] == b[l])
    }
    #[inline(always)]
    pub fn select<const N: usize>(m: &[bool; N], yes: &[f32; N], no: &[f32; N]) -> [f32; N] {
        std::array::from_fn(|l| if m[l] { yes[l] } else { no[l] })
    }
    #[inline(always)]
    pub fn min(v: &[f32]) -> f32 {
        v.iter().copied().fold(f32::INFINITY, f32::min)
    }
}

#[derive(Clone, Copy)]
pub struct Portable([f32; 16]);

#[derive(Clone, Copy)]
pub struct PortableHalf([f32; 8]);

impl F32x8 for PortableHalf {
    const REGISTERS: usize = 8;
    type Mask = [bool; 8];
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        Self([v; 8])
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        Self(std::ptr::read_unaligned(p as *const [f32; 8]))
    }
    #[inline(always)]
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
        Self(lanes::fma(&a.0, &b.0, &c.0))
    }
    #[inline(always)]
    unsafe fn sub(a: Self, b: Self) -> Self {
        Self(lanes::sub(&a.0, &b.0))
    }
    #[inline(always)]
    unsafe fn bits(m: Self::Mask) -> u32 {
        lanes::bits(&m)
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        std::ptr::write_unaligned(p as *mut [f32; 8], self.0)
    }
    #[inline(always)]
    unsafe fn lt(a: Self, b: Self) -> Self::Mask {
        lanes::lt(&a.0, &b.0)
    }
    #[inline(always)]
    unsafe fn eq(a: Self, b: Self) -> Self::Mask {
        lanes::eq(&a.0, &b.0)
    }
    #[inline(always)]
    unsafe fn select(m: Self::Mask, yes: Self, no: Self) -> Self {
        Self(lanes::select(&m, &yes.0, &no.0))
    }
    #[inline(always)]
    unsafe fn min(a: Self, b: Self) -> Self {
        Self(lanes::select(&lanes::lt(&a.0, &b.0), &a.0, &b.0))
    }
    #[inline(always)]
    unsafe fn reduce_min(self) -> f32 {
        lanes::min(&self.0)
    }
}

impl F32x16 for Portable {
    /// As for AVX2: what a 128-bit SIMD unit with 32 registers (NEON) or
    /// 16 (SSE2) holds, near enough.
    const REGISTERS: usize = 8;
    type Mask = [bool; 16];
    type Half = PortableHalf;
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        Self([v; 16])
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        Self(std::ptr::read_unaligned(p as *const [f32; 16]))
    }
    #[inline(always)]
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
        Self(lanes::fma(&a.0, &b.0, &c.0))
    }
    #[inline(always)]
    unsafe fn sub(a: Self, b: Self) -> Self {
        Self(lanes::sub(&a.0, &b.0))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        std::ptr::write_unaligned(p as *mut [f32; 16], self.0)
    }
    #[inline(always)]
    unsafe fn lt(a: Self, b: Self) -> Self::Mask {
        lanes::lt(&a.0, &b.0)
    }
    #[inline(always)]
    unsafe fn eq(a: Self, b: Self) -> Self::Mask {
        lanes::eq(&a.0, &b.0)
    }
    #[inline(always)]
    unsafe fn select(m: Self::Mask, yes: Self, no: Self) -> Self {
        Self(lanes::select(&m, &yes.0, &no.0))
    }
    #[inline(always)]
    unsafe fn bits(m: Self::Mask) -> u32 {
        lanes::bits(&m)
    }
    #[inline(always)]
    unsafe fn reduce_min(self) -> f32 {
        lanes::min(&self.0)
    }
    #[inline(always)]
    unsafe fn store_u32(self, p: *mut u32) {
        for (l, &v) in self.0.iter().enumerate() {
            *p.add(l) = v as u32;
        }
    }
    #[inline(always)]
    unsafe fn gather(table: &[f32], idx: &[u32; 16]) -> Self {
        let last = table.len() - 1;
        Self(std::array::from_fn(|l| table[(idx[l] as usize).min(last)]))
    }
    #[inline(always)]
    unsafe fn halves(self) -> (PortableHalf, PortableHalf) {
        (
            PortableHalf(std::array::from_fn(|l| self.0[l])),
            PortableHalf(std::array::from_fn(|l| self.0[8 + l])),
        )
    }
}

#[cfg(target_arch = "x86_64")]
pub use x86::{Avx2, Avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{F32x16, F32x8};
    use std::arch::x86_64::*;

    /// Both x86 paths' eight lanes: one AVX register.
    #[derive(Clone, Copy)]
    pub struct Half256(__m256);

    impl F32x8 for Half256 {
        const REGISTERS: usize = 16;
        type Mask = __m256;
        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            Self(_mm256_set1_ps(v))
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Self(_mm256_loadu_ps(p))
        }
        #[inline(always)]
        unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
            Self(_mm256_fmadd_ps(a.0, b.0, c.0))
        }
        #[inline(always)]
        unsafe fn sub(a: Self, b: Self) -> Self {
            Self(_mm256_sub_ps(a.0, b.0))
        }
        #[inline(always)]
        unsafe fn bits(m: __m256) -> u32 {
            _mm256_movemask_ps(m) as u32
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            _mm256_storeu_ps(p, self.0)
        }
        #[inline(always)]
        unsafe fn lt(a: Self, b: Self) -> __m256 {
            _mm256_cmp_ps::<_CMP_LT_OQ>(a.0, b.0)
        }
        #[inline(always)]
        unsafe fn eq(a: Self, b: Self) -> __m256 {
            _mm256_cmp_ps::<_CMP_EQ_OQ>(a.0, b.0)
        }
        #[inline(always)]
        unsafe fn select(m: __m256, yes: Self, no: Self) -> Self {
            Self(_mm256_blendv_ps(no.0, yes.0, m))
        }
        #[inline(always)]
        unsafe fn min(a: Self, b: Self) -> Self {
            Self(_mm256_min_ps(a.0, b.0))
        }
        #[inline(always)]
        unsafe fn reduce_min(self) -> f32 {
            min_of_256(self.0)
        }
    }

    /// The smallest of eight lanes.
    #[inline(always)]
    unsafe fn min_of_256(m: __m256) -> f32 {
        let m = _mm_min_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m = _mm_min_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_min_ss(m, _mm_shuffle_ps::<1>(m, m));
        _mm_cvtss_f32(m)
    }

    /// `sums[j] += w · row[j]`, four values per step: a plain add when
    /// `w = 1` (unweighted fits; on Zen cores adds have pipes of their own,
    /// so this keeps the FMA pipes for the distances), else a fused
    /// multiply-add (`1·x + s` rounds exactly as `x + s`, so both give the
    /// same bits). 256-bit on purpose: the next row of the same
    /// cluster reloads these sums, and where the core splits a 512-bit
    /// store in two halves the reload cannot be forwarded from them and
    /// waits for the store to retire (a quarter of the step's time).
    #[inline(always)]
    unsafe fn add_scaled_f64_256(sums: &mut [f64], row: &[f32], w: f64) {
        let d = row.len();
        assert!(sums.len() >= d);
        let wv = _mm256_set1_pd(w);
        let full = d - d % 4;
        if w == 1.0 {
            for j in (0..full).step_by(4) {
                let x = _mm256_cvtps_pd(_mm_loadu_ps(row.as_ptr().add(j)));
                let s = _mm256_loadu_pd(sums.as_ptr().add(j));
                _mm256_storeu_pd(sums.as_mut_ptr().add(j), _mm256_add_pd(s, x));
            }
        } else {
            for j in (0..full).step_by(4) {
                let x = _mm256_cvtps_pd(_mm_loadu_ps(row.as_ptr().add(j)));
                let s = _mm256_loadu_pd(sums.as_ptr().add(j));
                _mm256_storeu_pd(sums.as_mut_ptr().add(j), _mm256_fmadd_pd(wv, x, s));
            }
        }
        for j in full..d {
            sums[j] += w * row[j] as f64;
        }
    }

    #[derive(Clone, Copy)]
    pub struct Avx512(__m512);

    impl F32x16 for Avx512 {
        const REGISTERS: usize = 32;
        type Mask = __mmask16;
        type Half = Half256;
        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            Self(_mm512_set1_ps(v))
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Self(_mm512_loadu_ps(p))
        }
        #[inline(always)]
        unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
            Self(_mm512_fmadd_ps(a.0, b.0, c.0))
        }
        #[inline(always)]
        unsafe fn sub(a: Self, b: Self) -> Self {
            Self(_mm512_sub_ps(a.0, b.0))
        }
        /// See [`add_scaled_f64_256`].
        #[inline(always)]
        unsafe fn add_scaled_f64(sums: &mut [f64], row: &[f32], w: f64) {
            add_scaled_f64_256(sums, row, w)
        }

        /// In registers, 16 × 16 at a time: a scalar copy would be
        /// auto-vectorised into scatters, which are far slower.
        #[inline(always)]
        unsafe fn transpose_tile(tile: &[f32], d: usize, out: &mut [f32]) {
            assert!(tile.len() >= 16 * d && out.len() >= 16 * d);
            for j0 in (0..d).step_by(16) {
                let width = (d - j0).min(16);
                let mask = (u32::MAX >> (32 - width)) as __mmask16;
                let mut rows = [_mm512_setzero_ps(); 16];
                for (r, row) in rows.iter_mut().enumerate() {
                    // Masked: the last chunk of the last row may end the slice.
                    *row = _mm512_maskz_loadu_ps(mask, tile.as_ptr().add(r * d + j0));
                }
                let columns = transpose16(rows);
                for (c, column) in columns.iter().enumerate().take(width) {
                    _mm512_storeu_ps(out.as_mut_ptr().add((j0 + c) * 16), *column);
                }
            }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            _mm512_storeu_ps(p, self.0)
        }
        #[inline(always)]
        unsafe fn lt(a: Self, b: Self) -> Self::Mask {
            _mm512_cmp_ps_mask::<_CMP_LT_OQ>(a.0, b.0)
        }
        #[inline(always)]
        unsafe fn eq(a: Self, b: Self) -> Self::Mask {
            _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(a.0, b.0)
        }
        #[inline(always)]
        unsafe fn select(m: Self::Mask, yes: Self, no: Self) -> Self {
            Self(_mm512_mask_blend_ps(m, no.0, yes.0))
        }
        #[inline(always)]
        unsafe fn bits(m: Self::Mask) -> u32 {
            m as u32
        }
        #[inline(always)]
        unsafe fn reduce_min(self) -> f32 {
            _mm512_reduce_min_ps(self.0)
        }
        #[inline(always)]
        unsafe fn store_u32(self, p: *mut u32) {
            _mm512_storeu_si512(p as *mut _, _mm512_cvttps_epi32(self.0))
        }
        #[inline(always)]
        unsafe fn gather(table: &[f32], idx: &[u32; 16]) -> Self {
            assert!(!table.is_empty() && table.len() <= i32::MAX as usize);
            let last = _mm512_set1_epi32(table.len() as i32 - 1);
            let i = _mm512_min_epu32(_mm512_loadu_si512(idx.as_ptr() as *const _), last);
            Self(_mm512_i32gather_ps::<4>(i, table.as_ptr() as _))
        }
        #[inline(always)]
        unsafe fn halves(self) -> (Half256, Half256) {
            // Through f64 lanes: the f32 extract needs AVX512DQ.
            let hi = _mm512_extractf64x4_pd::<1>(_mm512_castps_pd(self.0));
            (
                Half256(_mm512_castps512_ps256(self.0)),
                Half256(_mm256_castpd_ps(hi)),
            )
        }
    }

    /// 16 × 16 transpose: interleave pairs of rows, then pairs of pairs
    /// (64-bit), then 128-bit lanes twice.
    #[inline(always)]
    unsafe fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
        let mut t = [_mm512_setzero_ps(); 16];
        for p in 0..8 {
            t[2 * p] = _mm512_unpacklo_ps(r[2 * p], r[2 * p + 1]);
            t[2 * p + 1] = _mm512_unpackhi_ps(r[2 * p], r[2 * p + 1]);
        }
        // u[4q + c]: column c (+4, +8, +12 by 128-bit lane) of rows 4q..4q+4.
        let mut u = [_mm512_setzero_ps(); 16];
        for q in 0..4 {
            let (a0, a1, b0, b1) = (t[4 * q], t[4 * q + 1], t[4 * q + 2], t[4 * q + 3]);
            // A nested fn, not a closure: closures lack the CPU features.
            #[inline(always)]
            unsafe fn pd(a: __m512, b: __m512, hi: bool) -> __m512 {
                let (a, b) = (_mm512_castps_pd(a), _mm512_castps_pd(b));
                _mm512_castpd_ps(if hi {
                    _mm512_unpackhi_pd(a, b)
                } else {
                    _mm512_unpacklo_pd(a, b)
                })
            }
            u[4 * q] = pd(a0, b0, false);
            u[4 * q + 1] = pd(a0, b0, true);
            u[4 * q + 2] = pd(a1, b1, false);
            u[4 * q + 3] = pd(a1, b1, true);
        }
        let mut out = [_mm512_setzero_ps(); 16];
        for c in 0..4 {
            // Lanes [c, c+8 | c, c+8] of rows 0–3 | 4–7, and of rows 8–11 | 12–15.
            let v0 = _mm512_shuffle_f32x4::<0x88>(u[c], u[4 + c]);
            let v1 = _mm512_shuffle_f32x4::<0xdd>(u[c], u[4 + c]);
            let v2 = _mm512_shuffle_f32x4::<0x88>(u[8 + c], u[12 + c]);
            let v3 = _mm512_shuffle_f32x4::<0xdd>(u[8 + c], u[12 + c]);
            out[c] = _mm512_shuffle_f32x4::<0x88>(v0, v2);
            out[c + 8] = _mm512_shuffle_f32x4::<0xdd>(v0, v2);
            out[c + 4] = _mm512_shuffle_f32x4::<0x88>(v1, v3);
            out[c + 12] = _mm512_shuffle_f32x4::<0xdd>(v1, v3);
        }
        out
    }

    /// 8 × 8 transpose: interleave pairs of rows, then pairs of pairs,
    /// then swap 128-bit halves.
    #[inline(always)]
    unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
        // Loops, not `array::from_fn`: its closures lack the CPU features,
        // and the shuffles would become calls.
        let mut t = [_mm256_setzero_ps(); 8];
        for p in 0..4 {
            t[2 * p] = _mm256_unpacklo_ps(r[2 * p], r[2 * p + 1]);
            t[2 * p + 1] = _mm256_unpackhi_ps(r[2 * p], r[2 * p + 1]);
        }
        // u[4h + c]: column c (and c + 4 in the upper half) of rows 4h..4h+4.
        let mut u = [_mm256_setzero_ps(); 8];
        for h in 0..2 {
            let (lo01, hi01, lo23, hi23) = (t[4 * h], t[4 * h + 1], t[4 * h + 2], t[4 * h + 3]);
            u[4 * h] = _mm256_shuffle_ps::<0x44>(lo01, lo23);
            u[4 * h + 1] = _mm256_shuffle_ps::<0xee>(lo01, lo23);
            u[4 * h + 2] = _mm256_shuffle_ps::<0x44>(hi01, hi23);
            u[4 * h + 3] = _mm256_shuffle_ps::<0xee>(hi01, hi23);
        }
        let mut out = [_mm256_setzero_ps(); 8];
        for c in 0..4 {
            out[c] = _mm256_permute2f128_ps::<0x20>(u[c], u[4 + c]);
            out[c + 4] = _mm256_permute2f128_ps::<0x31>(u[c], u[4 + c]);
        }
        out
    }

    #[derive(Clone, Copy)]
    pub struct Avx2(__m256, __m256);

    impl F32x16 for Avx2 {
        const REGISTERS: usize = 8;
        type Mask = (__m256, __m256);
        type Half = Half256;
        /// See [`add_scaled_f64_256`].
        #[inline(always)]
        unsafe fn add_scaled_f64(sums: &mut [f64], row: &[f32], w: f64) {
            add_scaled_f64_256(sums, row, w)
        }
        /// In registers, 8 × 8 at a time, as on AVX-512: the scalar copy
        /// made the small-k step half as fast as there.
        #[inline(always)]
        unsafe fn transpose_tile(tile: &[f32], d: usize, out: &mut [f32]) {
            assert!(tile.len() >= 16 * d && out.len() >= 16 * d);
            for j0 in (0..d).step_by(8) {
                let width = (d - j0).min(8);
                // Lanes below `width` on: the last chunk of the last row
                // may end the slice.
                let mask = _mm256_cmpgt_epi32(
                    _mm256_set1_epi32(width as i32),
                    _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                );
                for r0 in [0, 8] {
                    let mut rows = [_mm256_setzero_ps(); 8];
                    for (r, row) in rows.iter_mut().enumerate() {
                        let p = tile.as_ptr().add((r0 + r) * d + j0);
                        // A plain load where all 8 values are the row's:
                        // a masked load costs several times as much.
                        *row = if width == 8 {
                            _mm256_loadu_ps(p)
                        } else {
                            _mm256_maskload_ps(p, mask)
                        };
                    }
                    let columns = transpose8(rows);
                    for (c, column) in columns.iter().enumerate().take(width) {
                        _mm256_storeu_ps(out.as_mut_ptr().add((j0 + c) * 16 + r0), *column);
                    }
                }
            }
        }
        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            Self(_mm256_set1_ps(v), _mm256_set1_ps(v))
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Self(_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)))
        }
        #[inline(always)]
        unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
            Self(
                _mm256_fmadd_ps(a.0, b.0, c.0),
                _mm256_fmadd_ps(a.1, b.1, c.1),
            )
        }
        #[inline(always)]
        unsafe fn sub(a: Self, b: Self) -> Self {
            Self(_mm256_sub_ps(a.0, b.0), _mm256_sub_ps(a.1, b.1))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            _mm256_storeu_ps(p, self.0);
            _mm256_storeu_ps(p.add(8), self.1);
        }
        #[inline(always)]
        unsafe fn lt(a: Self, b: Self) -> Self::Mask {
            (
                _mm256_cmp_ps::<_CMP_LT_OQ>(a.0, b.0),
                _mm256_cmp_ps::<_CMP_LT_OQ>(a.1, b.1),
            )
        }
        #[inline(always)]
        unsafe fn eq(a: Self, b: Self) -> Self::Mask {
            (
                _mm256_cmp_ps::<_CMP_EQ_OQ>(a.0, b.0),
                _mm256_cmp_ps::<_CMP_EQ_OQ>(a.1, b.1),
            )
        }
        #[inline(always)]
        unsafe fn select(m: Self::Mask, yes: Self, no: Self) -> Self {
            Self(
                _mm256_blendv_ps(no.0, yes.0, m.0),
                _mm256_blendv_ps(no.1, yes.1, m.1),
            )
        }
        #[inline(always)]
        unsafe fn bits(m: Self::Mask) -> u32 {
            (_mm256_movemask_ps(m.0) as u32) | (_mm256_movemask_ps(m.1) as u32) << 8
        }
        #[inline(always)]
        unsafe fn reduce_min(self) -> f32 {
            min_of_256(_mm256_min_ps(self.0, self.1))
        }
        #[inline(always)]
        unsafe fn store_u32(self, p: *mut u32) {
            _mm256_storeu_si256(p as *mut __m256i, _mm256_cvttps_epi32(self.0));
            _mm256_storeu_si256(p.add(8) as *mut __m256i, _mm256_cvttps_epi32(self.1));
        }
        #[inline(always)]
        unsafe fn gather(table: &[f32], idx: &[u32; 16]) -> Self {
            assert!(!table.is_empty() && table.len() <= i32::MAX as usize);
            let last = _mm256_set1_epi32(table.len() as i32 - 1);
            // No closure here: it would be compiled without the CPU features.
            let p = idx.as_ptr() as *const __m256i;
            let lo = _mm256_min_epu32(_mm256_loadu_si256(p), last);
            let hi = _mm256_min_epu32(_mm256_loadu_si256(p.add(1)), last);
            Self(
                _mm256_i32gather_ps::<4>(table.as_ptr(), lo),
                _mm256_i32gather_ps::<4>(table.as_ptr(), hi),
            )
        }
        #[inline(always)]
        unsafe fn halves(self) -> (Half256, Half256) {
            (Half256(self.0), Half256(self.1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Transpose<'a> {
        tile: &'a [f32],
        d: usize,
        out: &'a mut [f32],
    }

    impl SimdKernel for Transpose<'_> {
        type Output = ();
        #[inline(always)]
        fn run<S: F32x16>(self) {
            // SAFETY: dispatched with S's CPU features; both slices hold 16·d values.
            unsafe { S::transpose_tile(self.tile, self.d, self.out) }
        }
    }

    /// Every width, including those that end inside a vector, with the
    /// tile ending exactly at the slice's end (the masked tail loads).
    #[test]
    fn every_level_transposes_as_the_scalar_loop() {
        for level in Level::available() {
            for d in 1..=40 {
                let tile: Vec<f32> = (0..16 * d).map(|i| i as f32).collect();
                let mut out = vec![f32::NAN; 16 * d];
                dispatch_at(
                    level,
                    Transpose {
                        tile: &tile,
                        d,
                        out: &mut out,
                    },
                );
                for r in 0..16 {
                    for j in 0..d {
                        assert_eq!(out[j * 16 + r], tile[r * d + j], "{level}, d = {d}");
                    }
                }
            }
        }
    }
}
