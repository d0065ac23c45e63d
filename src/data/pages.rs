//! Large matrices in 2 MiB pages where the operating system offers them.
//!
//! Why: the kernels read rows that are far apart (k-means++ scoring, the
//! pruned Lloyd steps' rescans) or stream hundreds of megabytes (PCA's
//! Gram). With 4 KiB pages a 512 MB matrix spans 131,072 pages, far more
//! than the TLB holds, so scattered reads and prefetches wait on page
//! walks too. Linux's transparent huge pages are commonly enabled only
//! for memory that asks (`madvise` mode), so a buffer of
//! [`HUGE_PAGE_MIN_BYTES`] or more asks, before its pages are first
//! touched (advice given afterwards changes nothing until the kernel's
//! background collapse gets to it). Elsewhere, or where the advice is
//! refused, it is an ordinary `Vec`: the advice is a hint, never a
//! requirement.

/// Buffers from this size up ask for huge pages: below it the TLB copes,
/// and a partly used 2 MiB page would waste more of a small buffer. It is
/// also glibc malloc's largest mmap threshold, so a buffer this large is a
/// mapping of its own: the advice covers no other allocation, and freeing
/// the buffer unmaps it.
pub const HUGE_PAGE_MIN_BYTES: usize = 32 << 20;

const HUGE_PAGE: usize = 2 << 20;

/// An empty `Vec` with room for `len` values, its whole 2 MiB pages
/// advised as huge pages when it is at least [`HUGE_PAGE_MIN_BYTES`] (on
/// Linux). Fill it without growing it past `len`: a larger buffer may be
/// a new allocation without the advice.
pub fn with_capacity<T: Copy>(len: usize) -> Vec<T> {
    let v: Vec<T> = Vec::with_capacity(len);
    advise_huge(
        v.as_ptr().cast(),
        len.saturating_mul(std::mem::size_of::<T>()),
    );
    v
}

/// [`with_capacity`] for a length read from a file's metadata, which a
/// damaged file can overstate: where the room cannot be had, an empty
/// `Vec` that grows as it is filled (ordinary pages), never an abort.
pub fn try_with_capacity<T: Copy>(len: usize) -> Vec<T> {
    let mut v: Vec<T> = Vec::new();
    if v.try_reserve_exact(len).is_err() {
        return Vec::new();
    }
    advise_huge(
        v.as_ptr().cast(),
        len.saturating_mul(std::mem::size_of::<T>()),
    );
    v
}

/// A row-major copy of `x`, whatever its layout, in a buffer from
/// [`with_capacity`]: the working copy a kernel reads.
pub fn standard_copy(x: ndarray::ArrayView2<f32>) -> ndarray::Array2<f32> {
    let mut flat = with_capacity(x.len());
    match x.as_slice() {
        Some(all) => flat.extend_from_slice(all),
        None => flat.extend(x.iter().copied()),
    }
    ndarray::Array2::from_shape_vec(x.raw_dim(), flat).expect("x's own shape")
}

/// Asks for huge pages on the whole 2 MiB pages inside `bytes` bytes at
/// `start`; returns whether the advice was given.
#[cfg(target_os = "linux")]
fn advise_huge(start: *const u8, bytes: usize) -> bool {
    if bytes < HUGE_PAGE_MIN_BYTES {
        return false;
    }
    let from = (start as usize).next_multiple_of(HUGE_PAGE);
    let to = (start as usize + bytes) / HUGE_PAGE * HUGE_PAGE;
    if to <= from {
        return false;
    }
    // SAFETY: MADV_HUGEPAGE is advice on how the kernel backs a range: it
    // never changes the range's contents or whether it is mapped, so no
    // range can make it unsound (one that is not mapped fails with
    // ENOMEM). The callers pass their own buffer, rounded inwards.
    let rc = unsafe { libc::madvise(from as *mut libc::c_void, to - from, libc::MADV_HUGEPAGE) };
    if rc != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "huge pages refused; the buffer keeps ordinary pages"
        );
    }
    rc == 0
}

#[cfg(not(target_os = "linux"))]
fn advise_huge(_start: *const u8, _bytes: usize) -> bool {
    false
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The `VmFlags` of the mapping that holds `addr`, from
    /// /proc/self/smaps.
    fn vm_flags(addr: usize) -> Option<String> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            let range = line.split_whitespace().next().unwrap_or("");
            if let Some((lo, hi)) = range.split_once('-') {
                if let (Ok(lo), Ok(hi)) =
                    (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
                {
                    inside = lo <= addr && addr < hi;
                    continue;
                }
            }
            if inside {
                if let Some(flags) = line.strip_prefix("VmFlags:") {
                    return Some(flags.trim().to_owned());
                }
            }
        }
        None
    }

    /// A large buffer's interior is advised (the kernel marks the mapping
    /// `hg`), a small one's is not, and both hold what was written. Where
    /// the kernel has no transparent huge pages at all there is nothing to
    /// check: the test says so and returns.
    #[test]
    fn large_buffers_ask_for_huge_pages_and_small_ones_do_not() {
        let thp = "/sys/kernel/mm/transparent_hugepage/enabled";
        if !std::path::Path::new(thp).exists() {
            eprintln!("SKIPPED: this kernel has no transparent huge pages ({thp} is missing)");
            return;
        }
        let n = HUGE_PAGE_MIN_BYTES / 4 + 12_345;
        let mut large: Vec<f32> = with_capacity(n);
        let (at, interior) = (
            large.as_ptr(),
            (large.as_ptr() as usize).next_multiple_of(HUGE_PAGE),
        );
        assert!(advise_huge(large.as_ptr().cast(), n * 4), "madvise refused");
        large.extend((0..n).map(|i| i as f32));
        assert_eq!(large.as_ptr(), at, "filled without moving");
        assert_eq!(large[n - 1], (n - 1) as f32);
        let flags = vm_flags(interior).expect("the buffer's mapping in smaps");
        assert!(
            flags.split_whitespace().any(|f| f == "hg"),
            "no huge-page advice on the buffer: VmFlags {flags}"
        );

        let mut small: Vec<f32> = with_capacity(1 << 20);
        assert!(!advise_huge(small.as_ptr().cast(), 4 << 20));
        small.resize(1 << 20, 1.5);
        assert!(small.iter().all(|&v| v == 1.5));
    }
}
