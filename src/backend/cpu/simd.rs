//! A 16-lane f32 vector with just the operations the assignment kernel needs,
//! implemented with AVX-512, with AVX2 (two halves), and portably. The kernel
//! is written once, generic over [`F32x16`].

/// Sixteen f32 lanes. Methods are `unsafe` because the x86 implementations
/// require the CPU features their caller was compiled for; loads and stores
/// also need 16 readable floats.
pub trait F32x16: Copy {
    type Mask: Copy;
    unsafe fn splat(v: f32) -> Self;
    unsafe fn load(p: *const f32) -> Self;
    /// `a·b + c`
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self;
    unsafe fn lt(a: Self, b: Self) -> Self::Mask;
    unsafe fn eq(a: Self, b: Self) -> Self::Mask;
    /// Lanes of `yes` where `m` is set, else of `no`.
    unsafe fn select(m: Self::Mask, yes: Self, no: Self) -> Self;
    /// The smallest lane.
    unsafe fn reduce_min(self) -> f32;
}

#[derive(Clone, Copy)]
pub struct Portable([f32; 16]);

impl F32x16 for Portable {
    type Mask = [bool; 16];
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
        Self(std::array::from_fn(|l| a.0[l] * b.0[l] + c.0[l]))
    }
    #[inline(always)]
    unsafe fn lt(a: Self, b: Self) -> Self::Mask {
        std::array::from_fn(|l| a.0[l] < b.0[l])
    }
    #[inline(always)]
    unsafe fn eq(a: Self, b: Self) -> Self::Mask {
        std::array::from_fn(|l| a.0[l] == b.0[l])
    }
    #[inline(always)]
    unsafe fn select(m: Self::Mask, yes: Self, no: Self) -> Self {
        Self(std::array::from_fn(
            |l| if m[l] { yes.0[l] } else { no.0[l] },
        ))
    }
    #[inline(always)]
    unsafe fn reduce_min(self) -> f32 {
        self.0.iter().copied().fold(f32::INFINITY, f32::min)
    }
}

#[cfg(target_arch = "x86_64")]
pub use x86::{Avx2, Avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::F32x16;
    use std::arch::x86_64::*;

    #[derive(Clone, Copy)]
    pub struct Avx512(__m512);

    impl F32x16 for Avx512 {
        type Mask = __mmask16;
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
        unsafe fn reduce_min(self) -> f32 {
            _mm512_reduce_min_ps(self.0)
        }
    }

    #[derive(Clone, Copy)]
    pub struct Avx2(__m256, __m256);

    impl F32x16 for Avx2 {
        type Mask = (__m256, __m256);
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
        unsafe fn reduce_min(self) -> f32 {
            let m = _mm256_min_ps(self.0, self.1);
            let m = _mm_min_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
            let m = _mm_min_ps(m, _mm_movehl_ps(m, m));
            let m = _mm_min_ss(m, _mm_shuffle_ps::<1>(m, m));
            _mm_cvtss_f32(m)
        }
    }
}
