//! Uniform structs, `#[repr(C)]` twins of the `Params` structs in `shaders/`.

use bytemuck::{Pod, Zeroable};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct AssignParams {
    /// One past the last row of the chunk to assign.
    pub rows: u32,
    pub d: u32,
    pub k: u32,
    pub first: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct AccumulateParams {
    pub rows: u32,
    pub d: u32,
    pub k: u32,
    pub seg_rows: u32,
    pub seg_offset: u32,
    pub first: u32,
    pub _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct ReduceParams {
    pub segments: u32,
    pub width: u32,
    pub groups: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct ColSumsParams {
    pub rows: u32,
    pub d: u32,
    pub seg_rows: u32,
    pub seg_offset: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct GramParams {
    pub rows: u32,
    pub d: u32,
    pub seg_rows: u32,
    pub seg_offset: u32,
    pub tiles: u32,
    pub _pad: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct ProjectParams {
    pub rows: u32,
    pub d: u32,
    pub c: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct PeakParams {
    pub iters: u32,
    pub _pad: [u32; 3],
}

impl PeakParams {
    pub fn new(iters: u32) -> Self {
        Self {
            iters,
            _pad: [0; 3],
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct SeedScoreParams {
    pub rows: u32,
    pub d: u32,
    pub t: u32,
    pub seg_rows: u32,
    pub seg_offset: u32,
    pub _pad: [u32; 3],
}

/// `seed_keep.wgsl`'s modes.
pub const SEED_KEEP: u32 = 0;
pub const SEED_START: u32 = 1;
pub const SEED_LOWER: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct SeedKeepParams {
    pub rows: u32,
    pub d: u32,
    pub j: u32,
    pub mode: u32,
    pub block_offset: u32,
    pub _pad: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct SeedDraw {
    /// First row of the block, within its chunk.
    pub start: u32,
    pub offset: f32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct SeedPickParams {
    pub rows: u32,
    pub count: u32,
    pub _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct SeedSampleParams {
    pub rows: u32,
    pub first: u32,
    pub salt: u32,
    pub capacity: u32,
    pub factor: f32,
    pub _pad: [u32; 3],
}
